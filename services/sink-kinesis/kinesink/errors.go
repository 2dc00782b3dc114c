package kinesink

import (
	"errors"

	"github.com/jetsync/jetsync/pkg/mapping"
)

var (
	// ErrNotConnected is returned by WriteBatch and Ping before Connect
	// succeeded or after Close. The engine retries it.
	ErrNotConnected = errors.New("kinesis writer is not connected")

	// ErrStreamNotFound means the Kinesis stream does not exist and
	// kinesis.create_stream_if_missing is off. Returned wrapped in
	// sink.Permanent: create the stream or fix kinesis.stream_name.
	ErrStreamNotFound = errors.New("kinesis stream not found")

	// ErrNoRegion means neither kinesis.region nor the SDK's chain
	// (AWS_REGION, the profile) names a region. Returned wrapped in
	// sink.Permanent.
	ErrNoRegion = errors.New("no AWS region configured")

	// ErrAuth means AWS refused the credentials or a permission
	// (AccessDenied, UnrecognizedClient, a bad signature). Returned wrapped
	// in sink.Permanent.
	ErrAuth = errors.New("AWS refused the credentials or a permission")

	// ErrKMS means the stream's KMS key cannot be used (disabled, not
	// found, access denied). Returned wrapped in sink.Permanent.
	// KMSThrottlingException is not this: it is retried.
	ErrKMS = errors.New("the stream's KMS key cannot be used")

	// ErrRejected means Kinesis refused a whole PutRecords call as invalid
	// (InvalidArgumentException, ValidationException): retrying the same
	// records cannot help. Returned wrapped in sink.Permanent.
	ErrRejected = errors.New("kinesis rejected the request")

	// ErrThrottled is the transient error of a PutRecords call in which
	// Kinesis throttled some records (ProvisionedThroughputExceededException,
	// KMSThrottlingException) or failed them (InternalFailure). The engine
	// backs off and calls WriteBatch again, which re-sends only those
	// records and every later record of the same partition keys.
	ErrThrottled = errors.New("kinesis failed some records of the call")

	// ErrRecordTooLarge is the per-event failure of an event whose record
	// (data plus partition key) exceeds 1MiB. The error policy decides.
	ErrRecordTooLarge = errors.New("record too large for kinesis")

	// ErrPartitionKey is the per-event failure of a partition key that
	// renders empty or longer than 256 characters. The error policy decides.
	ErrPartitionKey = errors.New("invalid partition key")

	// ErrProjection is the per-event failure of a projection that fails at
	// run time or does not produce exactly one JSON object.
	ErrProjection = mapping.ErrProjection
)
