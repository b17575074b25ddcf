package events

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// CloudEvents attribute headers (NATS protocol binding, binary content mode): every attribute
// travels as a "ce-" header and the message body is the event data.
const (
	HeaderID              = "ce-id"
	HeaderSource          = "ce-source"
	HeaderType            = "ce-type"
	HeaderSubject         = "ce-subject"
	HeaderTime            = "ce-time"
	HeaderSpecVersion     = "ce-specversion"
	HeaderDataSchema      = "ce-dataschema"
	HeaderDataContentType = "ce-datacontenttype"
	// HeaderActor is a CloudEvents extension: who caused the event ("user:<id>", "token:<id>",
	// "system").
	HeaderActor = "ce-actor"
	// HeaderRequestID is a CloudEvents extension: the X-Request-Id of the HTTP request that
	// caused the event.
	HeaderRequestID = "ce-requestid"
	// HeaderSourceIP is a CloudEvents extension: the client address of that request.
	HeaderSourceIP = "ce-sourceip"
	// HeaderUserAgent is a CloudEvents extension: the client's User-Agent.
	HeaderUserAgent = "ce-useragent"
	// HeaderChainHash is a CloudEvents extension: SHA-256 (hex) over the previous event of the
	// same aggregate's chain hash and this event's content, so an altered or removed event breaks
	// the chain (tamper evidence; see ChainHash).
	HeaderChainHash = "ce-chainhash"
	// HeaderContentType is the plain NATS content type, for tools that ignore CloudEvents.
	HeaderContentType = "Content-Type"
)

// Source is the CloudEvents source attribute of every event identityd emits.
const Source = "urn:identityd"

// DataSchemaURI is the dataschema attribute of an event type at a schema version.
func DataSchemaURI(t Type, version int) string {
	return "urn:identityd:schema:" + string(t) + ":v" + strconv.Itoa(version)
}

// Metadata is the context of a command, recorded with each event it causes.
type Metadata struct {
	// Actor is who caused the event: "user:<id>/session:<id>", "user:<id>/token:<id>",
	// "anonymous" (sign-up, log-in) or "system".
	Actor string
	// RequestID is the X-Request-Id of the HTTP request.
	RequestID string
	// SourceIP is the client address of the request.
	SourceIP string
	// UserAgent is the client's User-Agent (truncated to 256 bytes).
	UserAgent string
}

// Envelope is one event with its CloudEvents attributes and, once read back, its position.
type Envelope struct {
	ID       string
	Type     Type
	Subject  string // CloudEvents subject: the aggregate as "kind/id"
	Time     time.Time
	Metadata Metadata
	Data     Event
	Sequence uint64 // stream sequence; 0 until stored
	NATSSubj string // subject the event is stored under
	// WrittenVersion is the payload's schema version as stored (Data is always upcast to the
	// current version).
	WrittenVersion int
	// ChainHash is the stored ce-chainhash; ContentHash is recomputed from what was read. With
	// the previous event's ChainHash, ChainHash(prev, ContentHash) must equal ChainHash.
	ChainHash   string
	ContentHash string
	// KeyID is the ce-keyid of the key that signed the event ("" for a legacy unsigned event).
	KeyID string
	// Refusal is set, and every field but Sequence, NATSSubj and ID left empty, when the event
	// failed signature verification (see Keyring.Decode): it occupies a stream position but is
	// not an event of identityd's. Readers that need positions (an aggregate's version) see such
	// stubs; every other reader skips them.
	Refusal error
}

// ErrUndecodable wraps every failure to decode a stored message into an Envelope. Such a message
// cannot be fixed by retrying.
var ErrUndecodable = errors.New("undecodable event")

// Encode turns an event into a NATS message in CloudEvents binary mode, stamped with its
// type's current schema version, chained to prevChain, the chain hash of the aggregate's
// previous event ("" for its first), and signed with key. It returns the message and the
// event's chain hash.
func Encode(key SigningKey, id string, at time.Time, meta Metadata, prevChain string, e Event) (*nats.Msg, string, error) {
	if !key.Valid() {
		return nil, "", errors.New("encode: no signing key")
	}
	version := CurrentVersion(e.EventType())
	if version == 0 {
		return nil, "", fmt.Errorf("encode: unknown event type %s", e.EventType())
	}
	data, err := json.Marshal(e)
	if err != nil {
		return nil, "", fmt.Errorf("encode %s: %w", e.EventType(), err)
	}
	const versionField = `{"schema_version":`
	if !bytes.HasPrefix(data, []byte(versionField)) {
		return nil, "", fmt.Errorf("encode %s: payload does not start with schema_version", e.EventType())
	}
	rest := data[len(versionField):]
	rest = rest[bytes.IndexAny(rest, ",}"):]
	data = append([]byte(versionField+strconv.Itoa(version)), rest...)
	m := nats.NewMsg(Subject(e))
	m.Data = data
	h := m.Header
	h.Set(HeaderSpecVersion, "1.0")
	h.Set(HeaderID, id)
	h.Set(HeaderSource, Source)
	h.Set(HeaderType, string(e.EventType()))
	h.Set(HeaderSubject, e.Aggregate().String())
	h.Set(HeaderTime, at.UTC().Format(time.RFC3339Nano))
	h.Set(HeaderDataContentType, "application/json")
	h.Set(HeaderContentType, "application/json")
	h.Set(HeaderDataSchema, DataSchemaURI(e.EventType(), version))
	for k, v := range map[string]string{HeaderActor: meta.Actor, HeaderRequestID: meta.RequestID,
		HeaderSourceIP: meta.SourceIP, HeaderUserAgent: truncate(meta.UserAgent, 256)} {
		if v != "" {
			h.Set(k, v)
		}
	}
	content := contentHash(h, data)
	chain := ChainHash(prevChain, content)
	h.Set(HeaderChainHash, chain)
	keyID, sig, mac := key.sign(m.Subject, content, chain)
	h.Set(HeaderKeyID, keyID)
	h.Set(HeaderSignature, sig)
	if mac != "" {
		h.Set(HeaderMAC, mac)
	}
	return m, chain, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// chainedHeaders are the attributes covered by the chain hash, in this order.
var chainedHeaders = []string{HeaderID, HeaderType, HeaderSubject, HeaderTime, HeaderDataSchema,
	HeaderActor, HeaderRequestID, HeaderSourceIP, HeaderUserAgent}

// contentHash is SHA-256 (hex) over the chained attributes and the payload as stored, each
// as its length (uvarint) followed by its bytes, so no two different contents hash alike.
func contentHash(h nats.Header, data []byte) string {
	buf := make([]byte, 0, 512+len(data))
	for _, k := range chainedHeaders {
		v := h.Get(k)
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		buf = append(buf, v...)
	}
	buf = binary.AppendUvarint(buf, uint64(len(data)))
	buf = append(buf, data...)
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}

// Continues reports whether the event follows prev, the chain hash of the last event accepted
// from its aggregate ("" for none): its chain hash must be ChainHash(prev, its content). A
// genuine event appended anywhere but at its aggregate's head — a replay of an older one — does
// not. Events written before chaining (no chain hash) continue any chain.
func (e Envelope) Continues(prev string) bool {
	return e.ChainHash == "" || ChainHash(prev, e.ContentHash) == e.ChainHash
}

// ChainHash links an event's content hash to the chain hash of the previous event of the same
// aggregate ("" for the first): hex SHA-256 of prev + ":" + content.
func ChainHash(prev, content string) string {
	sum := sha256.Sum256([]byte(prev + ":" + content))
	return hex.EncodeToString(sum[:])
}

// Decode verifies a stored message's signature against the keyring and reads it back into an
// Envelope; subject is the NATS subject it is stored under, seq its stream sequence.
//
// An event that fails verification returns an error matching ErrUndecodable and one of
// ErrUnsigned, ErrUnknownKey or ErrBadSignature (IsRefused), together with a stub Envelope
// that has only Sequence, NATSSubj, ID and Refusal set. Unknown types and malformed payloads
// return an error wrapping ErrUndecodable.
func (k *Keyring) Decode(subject string, h nats.Header, data []byte, seq uint64) (Envelope, error) {
	content := contentHash(h, data)
	if err := k.verify(subject, h.Get(HeaderKeyID), h.Get(HeaderSignature), h.Get(HeaderMAC), content, h.Get(HeaderChainHash), seq); err != nil {
		return Envelope{Sequence: seq, NATSSubj: subject, ID: h.Get(HeaderID), Refusal: err}, err
	}
	env, err := decode(subject, h, data, seq)
	if err != nil {
		return Envelope{}, err
	}
	env.ContentHash = content
	return env, nil
}

// decode reads a stored message into an Envelope, without checking its signature.
func decode(subject string, h nats.Header, data []byte, seq uint64) (Envelope, error) {
	typ := Type(h.Get(HeaderType))
	dec, ok := registry[typ]
	if !ok {
		return Envelope{}, fmt.Errorf("%w: seq %d: unknown type %q", ErrUndecodable, seq, typ)
	}
	at, err := time.Parse(time.RFC3339Nano, h.Get(HeaderTime))
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: seq %d: bad %s: %w", ErrUndecodable, seq, HeaderTime, err)
	}
	var ver Versioned
	if err := json.Unmarshal(data, &ver); err != nil {
		return Envelope{}, fmt.Errorf("%w: seq %d (%s): %w", ErrUndecodable, seq, typ, err)
	}
	current, err := upcast(typ, ver.SchemaVersion, data)
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: seq %d (%s): %w", ErrUndecodable, seq, typ, err)
	}
	payload, err := dec(current)
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: seq %d (%s): %w", ErrUndecodable, seq, typ, err)
	}
	return Envelope{
		ID:      h.Get(HeaderID),
		Type:    typ,
		Subject: h.Get(HeaderSubject),
		Time:    at,
		Metadata: Metadata{Actor: h.Get(HeaderActor), RequestID: h.Get(HeaderRequestID),
			SourceIP: h.Get(HeaderSourceIP), UserAgent: h.Get(HeaderUserAgent)},
		Data:           payload,
		Sequence:       seq,
		NATSSubj:       subject,
		WrittenVersion: ver.SchemaVersion,
		ChainHash:      h.Get(HeaderChainHash),
		KeyID:          h.Get(HeaderKeyID),
	}, nil
}

// decodeAs decodes a current-version payload of type T. Unknown fields are tolerated: a newer
// writer may add fields (see the evolution policy in docs/events.md).
func decodeAs[T Event](data []byte) (Event, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return v, nil
}
