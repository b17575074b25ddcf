package events

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
)

var (
	fixUser = uuid.MustParse("0194f3a2-5b1c-7d2e-8f00-1a2b3c4d5e6f")
	fixAt   = time.Date(2026, 11, 22, 10, 0, 0, 1000, time.UTC)
)

func TestEncodeStampsCurrentVersionAndMetadata(t *testing.T) {
	meta := Metadata{Actor: "system", RequestID: "req_1", SourceIP: "203.0.113.9", UserAgent: strings.Repeat("ü", 200)}
	for _, e := range []Event{
		Renamed(fixUser, "A", "B"),
		UserDeleted{UserID: fixUser}, // no version set: Encode stamps it
		UserRegistered{Versioned: Versioned{SchemaVersion: 99}, UserID: fixUser},
	} {
		m, chain, err := Encode(testKey, "id-1", fixAt, meta, "", e)
		if err != nil {
			t.Fatal(err)
		}
		var v Versioned
		if err := json.Unmarshal(m.Data, &v); err != nil || v.SchemaVersion != CurrentVersion(e.EventType()) {
			t.Fatalf("%s: schema_version %d, want %d (%s)", e.EventType(), v.SchemaVersion, CurrentVersion(e.EventType()), m.Data)
		}
		h := m.Header
		if h.Get(HeaderSpecVersion) != "1.0" || h.Get(HeaderType) != string(e.EventType()) || h.Get(HeaderSourceIP) != "203.0.113.9" ||
			h.Get(HeaderDataSchema) != DataSchemaURI(e.EventType(), CurrentVersion(e.EventType())) || h.Get(HeaderChainHash) != chain {
			t.Fatalf("headers %v", h)
		}
		if len(h.Get(HeaderUserAgent)) > 256 || !strings.HasPrefix(h.Get(HeaderUserAgent), "ü") || strings.ContainsRune(h.Get(HeaderUserAgent), '\uFFFD') {
			t.Fatalf("user agent not truncated on a rune boundary: %d bytes", len(h.Get(HeaderUserAgent)))
		}
		env, err := testKeyring.Decode(m.Subject, h, m.Data, 7)
		if err != nil {
			t.Fatal(err)
		}
		if env.Metadata != (Metadata{Actor: "system", RequestID: "req_1", SourceIP: "203.0.113.9", UserAgent: h.Get(HeaderUserAgent)}) {
			t.Fatalf("metadata round trip: %+v", env.Metadata)
		}
		if ChainHash("", env.ContentHash) != env.ChainHash {
			t.Fatal("chain hash does not verify after a round trip")
		}
	}
}

// TestChainDetectsTampering: altering any chained attribute or the payload, or removing an
// event, breaks the chain, even without the signatures (checked on their own in signing_test.go).
func TestChainDetectsTampering(t *testing.T) {
	var msgs []*nats.Msg
	prev := ""
	for i, name := range []string{"B", "C", "D"} {
		m, chain, err := Encode(testKey, uuid.NewString(), fixAt.Add(time.Duration(i)*time.Second), Metadata{Actor: "system"}, prev, Renamed(fixUser, "A", name))
		if err != nil {
			t.Fatal(err)
		}
		msgs, prev = append(msgs, m), chain
	}
	verify := func(ms []*nats.Msg) bool {
		prev := ""
		for i, m := range ms {
			env, err := decode(m.Subject, m.Header, m.Data, uint64(i+1))
			if err != nil {
				t.Fatal(err)
			}
			if ChainHash(prev, contentHash(m.Header, m.Data)) != env.ChainHash {
				return false
			}
			prev = env.ChainHash
		}
		return true
	}
	if !verify(msgs) {
		t.Fatal("an untouched chain does not verify")
	}
	clone := func() []*nats.Msg {
		out := make([]*nats.Msg, len(msgs))
		for i, m := range msgs {
			c := nats.NewMsg(m.Subject)
			c.Data = append([]byte(nil), m.Data...)
			for k, v := range m.Header {
				c.Header[k] = append([]string(nil), v...)
			}
			out[i] = c
		}
		return out
	}
	tampered := map[string]func([]*nats.Msg) []*nats.Msg{
		"payload": func(ms []*nats.Msg) []*nats.Msg {
			ms[1].Data = []byte(strings.Replace(string(ms[1].Data), `"C"`, `"X"`, 2))
			return ms
		},
		"actor": func(ms []*nats.Msg) []*nats.Msg { ms[1].Header.Set(HeaderActor, "user:someone-else"); return ms },
		"time": func(ms []*nats.Msg) []*nats.Msg {
			ms[0].Header.Set(HeaderTime, fixAt.Add(time.Hour).Format(time.RFC3339Nano))
			return ms
		},
		"removed":   func(ms []*nats.Msg) []*nats.Msg { return append(ms[:1], ms[2:]...) },
		"reordered": func(ms []*nats.Msg) []*nats.Msg { ms[0], ms[1] = ms[1], ms[0]; return ms },
	}
	for name, f := range tampered {
		if verify(f(clone())) {
			t.Errorf("tampering with the %s went unnoticed", name)
		}
	}
}

// TestReadsOlderVersions: events written by earlier builds (testdata/v1-stream.jsonl, as the
// first release wrote them: v1 payloads, no chain hashes) decode to today's types.
func TestReadsOlderVersions(t *testing.T) {
	f, err := os.Open("testdata/v1-stream.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	msgs, err := ReadStoredMessages(f)
	if err != nil || len(msgs) != 7 {
		t.Fatalf("%d fixture messages, err %v", len(msgs), err)
	}
	var renames []UserRenamed
	for _, m := range msgs {
		env, err := m.Decode(legacyKeyring)
		if err != nil {
			t.Fatalf("seq %d: %v", m.Sequence, err)
		}
		if r, ok := env.Data.(UserRenamed); ok {
			if env.WrittenVersion != 1 || r.SchemaVersion != 2 {
				t.Fatalf("rename read as v%d from v%d", r.SchemaVersion, env.WrittenVersion)
			}
			renames = append(renames, r)
		}
	}
	if len(renames) != 2 || renames[0].Name != "Ada King" || renames[0].Changes["name"] != (FieldChange{Before: "Ada Lovelace", After: "Ada King"}) {
		t.Fatalf("upcast renames: %+v", renames)
	}
}

func TestDecodeRejects(t *testing.T) {
	good, _, err := Encode(testKey, "id", fixAt, Metadata{}, "", UserDeleted{UserID: fixUser})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*nats.Msg){
		"unknown type":       func(m *nats.Msg) { m.Header.Set(HeaderType, "identityd.user.exploded") },
		"bad time":           func(m *nats.Msg) { m.Header.Set(HeaderTime, "yesterday") },
		"not json":           func(m *nats.Msg) { m.Data = []byte("{") },
		"future version":     func(m *nats.Msg) { m.Data = []byte(`{"schema_version":9,"user_id":"` + fixUser.String() + `"}`) },
		"version 0":          func(m *nats.Msg) { m.Data = []byte(`{"user_id":"` + fixUser.String() + `"}`) },
		"wrong payload type": func(m *nats.Msg) { m.Data = []byte(`{"schema_version":1,"user_id":42}`) },
	}
	for name, mutate := range cases {
		m := nats.NewMsg(good.Subject)
		m.Data = append([]byte(nil), good.Data...)
		for k, v := range good.Header {
			m.Header[k] = v
		}
		mutate(m)
		if _, err := testKeyring.Decode(m.Subject, m.Header, m.Data, 1); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
