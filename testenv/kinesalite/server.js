#!/usr/bin/env node
// A Kinesis-compatible server (kinesalite) for jetsync's tests, bound to
// 127.0.0.1 only (kinesalite's own CLI listens on every interface).
//
//   node server.js [PORT]        PORT 0 or absent = a free port
//
// The first stdout line is `listening 127.0.0.1:PORT`.
// Environment:
//   KINESALITE_PATH       LevelDB directory; the data survives a restart on
//                         the same directory. Unset = in memory.
//   KINESALITE_OWNER_PID  exit when the process with this pid is gone, so a
//                         killed test binary leaves no server behind.
'use strict'

const kinesalite = require('kinesalite')

const port = Number(process.argv[2] || 0)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: node server.js [PORT]  (PORT 0 = a free port)')
  process.exit(2)
}

const server = kinesalite({
  createStreamMs: 50,
  deleteStreamMs: 50,
  updateStreamMs: 50,
  shardLimit: 100,
  path: process.env.KINESALITE_PATH || undefined,
})

server.on('error', (err) => {
  console.error('kinesalite: ' + err.message)
  process.exit(1)
})

server.listen(port, '127.0.0.1', () => {
  const addr = server.address()
  console.log('listening 127.0.0.1:' + addr.port)
})

// Close the store (LevelDB flushes and unlocks) on SIGTERM/SIGINT, so a
// Stop/Start on the same KINESALITE_PATH keeps everything.
let stopping = false
function shutdown() {
  if (stopping) return
  stopping = true
  setTimeout(() => process.exit(0), 3000).unref()
  server.close(() => process.exit(0))
  if (server.closeAllConnections) server.closeAllConnections()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)

const owner = Number(process.env.KINESALITE_OWNER_PID || 0)
if (owner > 0) {
  setInterval(() => {
    try {
      process.kill(owner, 0)
    } catch (err) {
      if (err.code === 'ESRCH') shutdown()
    }
  }, 1000).unref()
}
