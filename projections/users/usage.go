package users

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
)

// UsageTracker keeps each token's and session's last use without an event per request: uses
// are coalesced in memory and written in one statement per interval (and on Close).
type UsageTracker struct {
	rm       *ReadModel
	interval time.Duration
	logger   *slog.Logger

	mu      sync.Mutex
	pending map[uuid.UUID]time.Time
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// NewUsageTracker starts a tracker that flushes every interval (default 1s) until Close; ctx
// carries values for its writes (its cancellation does not stop the tracker, Close does).
func NewUsageTracker(ctx context.Context, rm *ReadModel, interval time.Duration, logger *slog.Logger) *UsageTracker {
	if interval <= 0 {
		interval = time.Second
	}
	if logger == nil {
		logger = slog.Default()
	}
	t := &UsageTracker{rm: rm, interval: interval, logger: logger, pending: map[uuid.UUID]time.Time{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go t.loop(context.WithoutCancel(ctx))
	return t
}

// Touch records a use of a token or session.
func (t *UsageTracker) Touch(id uuid.UUID, at time.Time) {
	t.mu.Lock()
	if prev, ok := t.pending[id]; !ok || at.After(prev) {
		t.pending[id] = at
	}
	t.mu.Unlock()
}

// Pending returns a use recorded here but not yet written, so a caller reads its own use.
func (t *UsageTracker) Pending(id uuid.UUID) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.pending[id]
	return at, ok
}

func (t *UsageTracker) loop(ctx context.Context) {
	defer close(t.done)
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			t.Flush(ctx)
		case <-t.stop:
			t.Flush(ctx)
			return
		}
	}
}

// Flush writes the pending uses. A failed write keeps them for the next try.
func (t *UsageTracker) Flush(ctx context.Context) {
	t.mu.Lock()
	batch := t.pending
	t.pending = map[uuid.UUID]time.Time{}
	t.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := t.rm.RecordUsage(ctx, batch); err != nil {
		t.logger.Warn("recording token usage failed; will retry", "err", err, "tokens", len(batch))
		t.mu.Lock()
		for id, at := range batch {
			if prev, ok := t.pending[id]; !ok || at.After(prev) {
				t.pending[id] = at
			}
		}
		t.mu.Unlock()
	}
}

// Close flushes and stops the tracker. It is safe to call more than once.
func (t *UsageTracker) Close() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}
