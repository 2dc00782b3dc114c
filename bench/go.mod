module github.com/jetsync/jetsync/bench

go 1.26.8

require (
	github.com/jetsync/jetsync/pkg v0.0.0
	github.com/jetsync/jetsync/services/sink-cache v0.0.0
)

replace (
	github.com/jetsync/jetsync/pkg => ../pkg
	github.com/jetsync/jetsync/services/sink-cache => ../services/sink-cache
)
