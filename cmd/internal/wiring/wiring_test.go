package wiring

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestPresenceConfigFitsEveryLease: whatever lease is set, the registry's timings validate and
// keep a margin of at least ten leases.
func TestPresenceConfigFitsEveryLease(t *testing.T) {
	for _, lease := range []time.Duration{time.Millisecond, 15 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, time.Second, 10 * time.Second} {
		p := PresenceConfig(Config{CacheLease: lease}, &nats.Conn{}, 1).WithDefaults()
		if err := p.Validate(); err != nil {
			t.Errorf("lease %s: %v", lease, err)
		}
		if p.Margin < 10*lease {
			t.Errorf("lease %s: margin %s, want at least ten leases", lease, p.Margin)
		}
	}
}
