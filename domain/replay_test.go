package domain

import (
	"math"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// TestReplayOlderVersionsGivesTodaysState replays a stream written by the first release (v1
// payloads, no chain hashes) and gets the state today's code would have built.
func TestReplayOlderVersionsGivesTodaysState(t *testing.T) {
	f, err := os.Open("../events/testdata/v1-stream.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	msgs, err := events.ReadStoredMessages(f)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.MustParse("0194f3a2-5b1c-7d2e-8f00-1a2b3c4d5e6f")
	var history []events.Envelope
	for _, m := range msgs {
		env, err := m.Decode(events.NewKeyring(math.MaxUint64)) // recorded before events were signed
		if err != nil {
			t.Fatal(err)
		}
		if env.Subject == events.UserAggregate(id).String() {
			history = append(history, env)
		}
	}
	now := ReplayUser(id, history, time.Time{})
	if !now.Exists || now.Deleted || now.Name != "Countess of Lovelace" || now.Email != "ada@example.com" ||
		!now.HasPassword || len(now.Tokens) != 1 || now.Tokens[0].Description != "laptop" || len(now.Sessions) != 1 || now.Version != 7 {
		t.Fatalf("today's state: %+v", now)
	}
	// As of an instant in the past: before the second rename and the token.
	then := ReplayUser(id, history, time.Date(2026, 11, 2, 9, 30, 30, 0, time.UTC))
	if then.Name != "Ada King" || len(then.Tokens) != 0 || then.Version != 5 || then.AsOf == nil {
		t.Fatalf("state as of 2026-11-02T09:30:30Z: %+v", then)
	}
	before := ReplayUser(id, history, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC))
	if before.Exists {
		t.Fatalf("user existed before it registered: %+v", before)
	}
	// Commands continue on an upcast history: a rename appends a v2 event.
	u := loadUser(id, history)
	if err := u.rename("Ada"); err != nil || len(u.changes) != 1 {
		t.Fatalf("rename on replayed state: %v %v", err, u.changes)
	}
	if r := u.changes[0].(events.UserRenamed); r.Changes["name"].Before != "Countess of Lovelace" {
		t.Fatalf("rename after replay: %+v", r)
	}
}
