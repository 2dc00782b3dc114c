module github.com/jetsync/jetsync/services/sink-kinesis

go 1.26.8

require github.com/jetsync/jetsync/pkg v0.0.0

replace github.com/jetsync/jetsync/pkg => ../../pkg
