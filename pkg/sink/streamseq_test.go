package sink

import (
	"testing"

	"github.com/nats-io/nats.go"
)

// TestStreamSeq: the stream sequence read from a reply subject equals
// what nats.go's Metadata parses, and any form streamSeq does not know is
// left to Metadata.
func TestStreamSeq(t *testing.T) {
	for _, tc := range []struct {
		reply string
		seq   uint64
		ok    bool
	}{
		{"$JS.ACK.EVENTS.sink-a.1.42.7.1733100000000000000.3", 42, true},
		{"$JS.ACK.EVENTS.sink-a.2.18446744073709551615.7.1733100000000000000.0", 18446744073709551615, true},
		{"$JS.ACK.dom.ACCHASH.EVENTS.sink-a.1.42.7.1733100000000000000.3.rand", 0, false}, // the 12-token form
		{"$JS.ACK.EVENTS.sink-a.1.4x2.7.1733100000000000000.3", 0, false},
		{"$JS.ACK.EVENTS.sink-a.1..7.1733100000000000000.3", 0, false},
		{"$JS.ACK.EVENTS.sink-a.1.42.7.1733100000000000000", 0, false},
		{"_INBOX.x.1.42.7.8.9.10.11", 0, false},
		{"", 0, false},
	} {
		seq, ok := streamSeq(tc.reply)
		if seq != tc.seq || ok != tc.ok {
			t.Errorf("streamSeq(%q) = %d, %v; want %d, %v", tc.reply, seq, ok, tc.seq, tc.ok)
		}
		if ok { // nats.go's own parse agrees
			md, err := (&nats.Msg{Reply: tc.reply, Sub: &nats.Subscription{}}).Metadata()
			if err != nil || md.Sequence.Stream != seq {
				t.Errorf("%q: nats.go reads stream sequence %v (%v), streamSeq %d", tc.reply, md, err, seq)
			}
		}
	}
}
