// Package kinesink is jetsync's AWS Kinesis Data Streams sink: it turns each
// event into one record (the envelope as JSON, or a jq projection of it,
// always carrying the event's position), partitions records by a template
// (the stream id by default, so one aggregate's events stay in one shard and
// in order), and puts them with PutRecords, re-sending failed records
// together with every later record of the same partition key so that the
// last copy of each record lands in order.
package kinesink

import (
	"net/url"
	"regexp"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Limits of the Kinesis PutRecords API.
const (
	// MaxRecordsPerCall is the most records one PutRecords call takes.
	MaxRecordsPerCall = 500
	// MaxBytesPerCall is the most data plus partition key bytes one
	// PutRecords call takes.
	MaxBytesPerCall = 5 << 20
	// MaxRecordBytes is the most data plus partition key bytes one record
	// may have.
	MaxRecordBytes = 1 << 20
	// MaxPartitionKeyChars is the longest partition key, in Unicode
	// characters (at least one is required).
	MaxPartitionKeyChars = 256
)

// DefaultPartitionKey keeps each aggregate's events in one shard, in order.
const DefaultPartitionKey = "{streamId}"

// Config is sink-kinesis's configuration file.
type Config struct {
	sink.Config `yaml:",inline"`

	Kinesis KinesisConfig `yaml:"kinesis"`
}

// KinesisConfig says which Kinesis stream receives the records and how they
// are made. Credentials are not configured here: the AWS SDK's standard
// chain finds them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and
// the shared files, web identity, ECS or EC2 instance roles).
type KinesisConfig struct {
	// StreamName is the Kinesis stream; it is sent with every call.
	StreamName string `yaml:"stream_name"`
	// Region overrides the SDK's region (AWS_REGION, the profile's region).
	Region string `yaml:"region"`
	// Endpoint overrides the service endpoint (aws.Config BaseEndpoint), for
	// kinesalite, LocalStack or a VPC endpoint, e.g. http://127.0.0.1:4567.
	Endpoint string `yaml:"endpoint"`
	// PartitionKey is a template over the event: {id} {streamId} {category}
	// {type} {version} {position} {sink}.
	PartitionKey string `yaml:"partition_key"`
	// Project is a jq expression over the envelope object {id, streamId,
	// category, type, version, time, position, data, metadata}; it must
	// produce one JSON object, to which the sink adds "position". Empty:
	// the whole envelope is the record.
	Project string `yaml:"project"`
	// CreateStreamIfMissing creates the stream with ShardCount shards at
	// start when it does not exist (for development); otherwise a missing
	// stream stops the sink.
	CreateStreamIfMissing bool  `yaml:"create_stream_if_missing"`
	ShardCount            int32 `yaml:"shard_count"`
	// MaxRecordsPerCall and MaxBytesPerCall bound each PutRecords call; a
	// batch of the engine is split into as many calls as it takes. They
	// cannot exceed the API's limits (500 records, 5MiB).
	MaxRecordsPerCall int             `yaml:"max_records_per_call"`
	MaxBytesPerCall   config.ByteSize `yaml:"max_bytes_per_call"`
	// RequestTimeout bounds one API call; a call that times out is retried
	// like any transport error.
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// DefaultConfig is the configuration before the file and the environment.
func DefaultConfig() Config {
	return Config{
		Config: sink.DefaultConfig("kinesis"),
		Kinesis: KinesisConfig{
			PartitionKey:      DefaultPartitionKey,
			ShardCount:        1,
			MaxRecordsPerCall: MaxRecordsPerCall,
			MaxBytesPerCall:   MaxBytesPerCall,
			RequestTimeout:    30 * time.Second,
		},
	}
}

// streamNameRE is what Kinesis accepts as a stream name.
var streamNameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,128}$`)

// Validate reports every problem at once, each naming its YAML key.
func (c *Config) Validate() error {
	var p config.Problems
	c.Config.Validate(&p)
	compile(c, &p)
	return p.Err()
}

// compiled is what Validate checks and NewWriter uses.
type compiled struct {
	partitionKey *mapping.Template
	project      *mapping.Projection
}

// compile checks the kinesis keys, reporting every problem to p. The result
// is only usable when p stayed empty.
func compile(c *Config, p *config.Problems) compiled {
	k := &c.Kinesis
	var out compiled
	if !streamNameRE.MatchString(k.StreamName) {
		p.Addf("kinesis.stream_name", "is required: a Kinesis stream name of 1-128 letters, digits, '_', '.' or '-' (got %q)", k.StreamName)
	}
	if k.Endpoint != "" {
		if u, err := url.Parse(k.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.Addf("kinesis.endpoint", "must be an http(s) URL such as http://127.0.0.1:4567, or empty for AWS (got %q)", k.Endpoint)
		}
	}
	if k.PartitionKey == "" {
		p.Addf("kinesis.partition_key", "is required: a template such as %s", DefaultPartitionKey)
	} else if t, err := mapping.CompileTemplate(k.PartitionKey, c.Name, true); err != nil {
		p.Addf("kinesis.partition_key", "%v", err)
	} else if t.Constant() && t.Render(nil) == "" {
		p.Addf("kinesis.partition_key", "renders empty; Kinesis needs 1-%d characters", MaxPartitionKeyChars)
	} else {
		out.partitionKey = t
	}
	if k.Project != "" {
		code, err := mapping.CompileProjection(k.Project)
		if err != nil {
			p.Addf("kinesis.project", "%v", err)
		}
		out.project = code
	}
	if k.ShardCount < 1 || k.ShardCount > 10000 {
		p.Addf("kinesis.shard_count", "must be between 1 and 10000, got %d", k.ShardCount)
	}
	if k.MaxRecordsPerCall < 1 || k.MaxRecordsPerCall > MaxRecordsPerCall {
		p.Addf("kinesis.max_records_per_call", "must be between 1 and %d (the PutRecords limit), got %d", MaxRecordsPerCall, k.MaxRecordsPerCall)
	}
	if k.MaxBytesPerCall < MaxRecordBytes || k.MaxBytesPerCall > MaxBytesPerCall {
		p.Addf("kinesis.max_bytes_per_call", "must be between 1MiB (one record) and 5MiB (the PutRecords limit), got %s", k.MaxBytesPerCall)
	}
	if k.RequestTimeout < 100*time.Millisecond {
		p.Addf("kinesis.request_timeout", "must be at least 100ms, e.g. 30s")
	}
	return out
}
