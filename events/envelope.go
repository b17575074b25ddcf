package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

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
	// Actor is who caused the event: "user:<id>", "token:<id>", "session:<id>" or "system".
	Actor string
	// RequestID is the X-Request-Id of the HTTP request.
	RequestID string
}

// Envelope is one event with its CloudEvents attributes and, once read back, its position.
type Envelope struct {
	ID        string
	Type      Type
	Subject   string // CloudEvents subject: the aggregate as "kind/id"
	Time      time.Time
	Metadata  Metadata
	Data      Event
	Sequence  uint64 // stream sequence; 0 until stored
	NATSSubj  string // subject the event is stored under
	RawSchema string // dataschema as read
}

// ErrUndecodable wraps every failure to decode a stored message into an Envelope. Such a message
// cannot be fixed by retrying.
var ErrUndecodable = errors.New("undecodable event")

// Encode turns an event into a NATS message in CloudEvents binary mode.
func Encode(id string, at time.Time, meta Metadata, e Event) (*nats.Msg, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", e.EventType(), err)
	}
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
	h.Set(HeaderDataSchema, DataSchemaURI(e.EventType(), SchemaVersion))
	if meta.Actor != "" {
		h.Set(HeaderActor, meta.Actor)
	}
	if meta.RequestID != "" {
		h.Set(HeaderRequestID, meta.RequestID)
	}
	return m, nil
}

// Decode reads a stored message back into an Envelope. Unknown types and malformed payloads
// return an error wrapping ErrUndecodable.
func Decode(subject string, h nats.Header, data []byte, seq uint64) (Envelope, error) {
	typ := Type(h.Get(HeaderType))
	dec, ok := registry[typ]
	if !ok {
		return Envelope{}, fmt.Errorf("%w: seq %d: unknown type %q", ErrUndecodable, seq, typ)
	}
	at, err := time.Parse(time.RFC3339Nano, h.Get(HeaderTime))
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: seq %d: bad %s: %w", ErrUndecodable, seq, HeaderTime, err)
	}
	payload, err := dec(data)
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: seq %d (%s): %w", ErrUndecodable, seq, typ, err)
	}
	return Envelope{
		ID:        h.Get(HeaderID),
		Type:      typ,
		Subject:   h.Get(HeaderSubject),
		Time:      at,
		Metadata:  Metadata{Actor: h.Get(HeaderActor), RequestID: h.Get(HeaderRequestID)},
		Data:      payload,
		Sequence:  seq,
		NATSSubj:  subject,
		RawSchema: h.Get(HeaderDataSchema),
	}, nil
}

// decodeAs strictly decodes a payload of type T, checking its schema version.
func decodeAs[T Event](data []byte) (Event, error) {
	var v T
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	var ver Versioned
	if err := json.Unmarshal(data, &ver); err != nil {
		return nil, err
	}
	if ver.SchemaVersion < 1 || ver.SchemaVersion > SchemaVersion {
		return nil, fmt.Errorf("unsupported schema_version %d", ver.SchemaVersion)
	}
	return v, nil
}
