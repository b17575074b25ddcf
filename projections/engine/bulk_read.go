package engine

import (
	"context"
	"sync"

	"github.com/identityd/identityd/events"
)

// bulkReaders is how many stream reads the bulk load keeps in flight. A read is a sequence of
// request/response round trips (JetStream direct gets) followed by decoding; with one read at a
// time the fold waits on each, and the NATS server, the client and the decoder take turns on
// the CPUs instead of working side by side. Three keep a two-core machine busy without piling
// up decoded events (at most 2 × bulkReaders batches are held).
const bulkReaders = 3

// readAhead reads the stream from a start sequence to an end sequence ahead of its consumer:
// bulkReaders goroutines read consecutive ranges of `batch` sequences concurrently, and next
// hands the events out in stream order, as if read one batch after the other.
//
// A range read is complete when it reaches the range's last sequence (the reader skips the
// sequences of deleted messages and goes on past them, so a complete read may overshoot; the
// excess belongs to the next range and is dropped). A read that stops short of its range means
// the reader found nothing more at that moment (the end of what it can see, or a lagging
// replica). From there on readAhead falls back to reading one batch at a time after the last
// event handed out, exactly like a sequential loop, so the caller sees the same short read it
// would have seen without the read-ahead. A read error is handed out in order too: the events
// before it are delivered first.
type readAhead struct {
	read  StreamReader
	end   uint64
	batch int

	cancel context.CancelFunc
	wg     sync.WaitGroup
	ranges []chan rangeRead // worker w reads ranges w, w+bulkReaders, …
	k      int              // index of the next range to hand out
	// sequential is set once a range came back short (or failed): next then reads directly.
	sequential bool
	last       uint64 // sequence of the last event handed out
}

// rangeRead is the result of reading the range [from, to].
type rangeRead struct {
	from, to uint64
	evs      []events.Envelope
	err      error
}

// complete reports whether the read covered its whole range.
func (r rangeRead) complete() bool {
	return r.err == nil && len(r.evs) > 0 && r.evs[len(r.evs)-1].Sequence >= r.to
}

// newReadAhead starts reading the stream from sequence `from` to `end` (inclusive). stop must
// be called when done.
func newReadAhead(ctx context.Context, read StreamReader, from, end uint64, batch int) *readAhead {
	ctx, cancel := context.WithCancel(ctx)
	ra := &readAhead{read: read, end: end, batch: batch, cancel: cancel, last: from - 1}
	if from > end {
		ra.sequential = true
		return ra
	}
	for w := range bulkReaders {
		ch := make(chan rangeRead, 1)
		ra.ranges = append(ra.ranges, ch)
		ra.wg.Add(1)
		go func() {
			defer ra.wg.Done()
			defer close(ch)
			for k := uint64(w); ; k += bulkReaders { //nolint:gosec // w < bulkReaders
				lo := from + k*uint64(batch) //nolint:gosec // batch > 0
				if lo > end {
					return
				}
				hi := min(lo+uint64(batch)-1, end)      //nolint:gosec // batch > 0
				evs, err := read(ctx, lo, int(hi-lo+1)) //nolint:gosec // ≤ batch
				r := rangeRead{from: lo, to: hi, evs: evs, err: err}
				select {
				case ch <- r:
				case <-ctx.Done():
					return
				}
				if !r.complete() {
					return // the consumer falls back to sequential reads here
				}
			}
		}()
	}
	return ra
}

// next returns the events after the last one handed out, in stream order: up to batch events,
// none at the end of the stream (or of what the reader can see), or the read's error. from is
// the sequence the read started at, for error messages.
func (ra *readAhead) next(ctx context.Context) (evs []events.Envelope, from uint64, err error) {
	for !ra.sequential {
		var r rangeRead
		var ok bool
		select {
		case r, ok = <-ra.ranges[ra.k%len(ra.ranges)]:
		case <-ctx.Done():
			return nil, ra.last + 1, context.Cause(ctx)
		}
		ra.k++
		if !ok { // the ranges are used up (or canceled): carry on sequentially
			ra.stopWorkers()
			break
		}
		if !r.complete() {
			ra.stopWorkers() // hand out what the short read got, then read one batch at a time
		}
		if r.err != nil {
			return nil, r.from, r.err
		}
		for len(r.evs) > 0 && r.evs[len(r.evs)-1].Sequence > r.to {
			r.evs = r.evs[:len(r.evs)-1] // the next range reads these again
		}
		if len(r.evs) == 0 {
			if ra.sequential {
				return nil, r.from, nil // a short read that found nothing: as a sequential read would
			}
			continue // every message of the range deleted
		}
		ra.last = r.evs[len(r.evs)-1].Sequence
		return r.evs, r.from, nil
	}
	from = ra.last + 1
	evs, err = ra.read(ctx, from, ra.batch)
	if err == nil && len(evs) > 0 {
		ra.last = evs[len(evs)-1].Sequence
	}
	return evs, from, err
}

// stopWorkers cancels the outstanding reads, waits for them, and switches to sequential reads.
func (ra *readAhead) stopWorkers() {
	ra.sequential = true
	ra.cancel()
	ra.wg.Wait()
}

// stop releases the read-ahead's goroutines.
func (ra *readAhead) stop() {
	ra.cancel()
	ra.wg.Wait()
}

// eventSource hands the bulk load the stream's events in order: a batch at a time, none at the
// end of the stream (or of what the source can see), or the read's error.
type eventSource interface {
	next(ctx context.Context) (evs []events.Envelope, from uint64, err error)
	stop()
}

// replaySource is an eventSource over a StreamReplayer: the replay runs in a goroutine, at most
// replayAhead batches ahead of the fold.
type replaySource struct {
	cancel context.CancelFunc
	ch     chan []events.Envelope
	err    error // the replay's result; read after ch is closed
	last   uint64
}

// replayAhead is how many decoded batches a replay may hold ready for the fold.
const replayAhead = 4

// newReplaySource starts replaying the stream from `from` to `end`; stop must be called when done.
func newReplaySource(ctx context.Context, replay StreamReplayer, from, end uint64, batch int) *replaySource {
	ctx, cancel := context.WithCancel(ctx)
	rs := &replaySource{cancel: cancel, ch: make(chan []events.Envelope, replayAhead), last: from - 1}
	go func() {
		defer close(rs.ch)
		rs.err = replay(ctx, from, end, batch, func(evs []events.Envelope) error {
			if len(evs) == 0 {
				return nil
			}
			select {
			case rs.ch <- evs:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return rs
}

func (rs *replaySource) next(ctx context.Context) ([]events.Envelope, uint64, error) {
	select {
	case evs, ok := <-rs.ch:
		if !ok {
			return nil, rs.last + 1, rs.err // the replay ended: at the end, short of it, or failed
		}
		from := rs.last + 1
		rs.last = evs[len(evs)-1].Sequence
		return evs, from, nil
	case <-ctx.Done():
		return nil, rs.last + 1, context.Cause(ctx)
	}
}

func (rs *replaySource) stop() {
	rs.cancel()
	for range rs.ch { //nolint:revive // drain, so the replay's goroutine ends
	}
}
