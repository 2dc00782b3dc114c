package envelope

import (
	"encoding/json"
	"testing"
)

// BenchmarkValidateNew measures the check every appended and imported
// event goes through (a ~250-byte payload and correlation metadata).
func BenchmarkValidateNew(b *testing.B) {
	ev := Event{ID: "7f3c1c9e-0001", Category: "order", StreamID: "o-00042", Type: "OrderUpdated",
		Data:     json.RawMessage(`{"orderId":"o-00042","customerId":"c-12345","status":"updated","currency":"EUR","total":1234.56,"items":[{"sku":"SKU-48213","qty":2,"price":19.99},{"sku":"SKU-11873","qty":1,"price":5.49}],"shipTo":{"city":"Lyon","zip":"69002","country":"FR"},"rev":17}`),
		Metadata: json.RawMessage(`{"correlationId":"c-1234","causationId":"e-1233","user":"u-1"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if err := ev.ValidateNew(""); err != nil {
			b.Fatal(err)
		}
	}
}
