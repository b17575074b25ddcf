package events

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/nats-io/nats.go"
)

// StoredMessage is one stream message as written, in a portable JSON form: the shape of
// test fixtures and of `identityctl events export --raw`.
type StoredMessage struct {
	Sequence uint64            `json:"seq"`
	Subject  string            `json:"subject"`
	Headers  map[string]string `json:"headers"`
	Data     json.RawMessage   `json:"data"`
}

// Decode verifies and decodes the stored message into an Envelope (Keyring.Decode).
func (m StoredMessage) Decode(k *Keyring) (Envelope, error) {
	h := nats.Header{}
	for k, v := range m.Headers {
		h.Set(k, v)
	}
	return k.Decode(m.Subject, h, m.Data, m.Sequence)
}

// ReadStoredMessages reads JSON Lines of StoredMessage.
func ReadStoredMessages(r io.Reader) ([]StoredMessage, error) {
	var out []StoredMessage
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var m StoredMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}
