package config

import (
	"fmt"
	"strconv"

	"github.com/dustin/go-humanize"
	"go.yaml.in/yaml/v3"
)

// ByteSize is a size in bytes that reads "4MiB", "500kB" or a plain number.
type ByteSize int64

// ParseByteSize reads a size such as "4MiB", "1.5MB" or "1048576".
func ParseByteSize(s string) (ByteSize, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size; write it like 4MiB, 512kB or 1048576", s)
	}
	if n > 1<<50 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return ByteSize(n), nil
}

// UnmarshalYAML accepts an integer or a string with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if i, err := strconv.ParseInt(n.Value, 10, 64); err == nil && n.Tag == "!!int" {
		*b = ByteSize(i)
		return nil
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalYAML writes the size with a binary unit.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

func (b ByteSize) String() string { return humanize.IBytes(uint64(b)) }
