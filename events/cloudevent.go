package events

import (
	"encoding/json"
	"time"
)

// redactedValue replaces secret fields (password hashes, token digests) outside the stream.
const redactedValue = "[redacted]"

// Redacted is the payload as JSON with its secret fields (password_hash, digest) replaced by
// "[redacted]": the form the audit log and exports show.
func Redacted(e Event) (json.RawMessage, error) {
	switch ev := e.(type) {
	case PasswordSet:
		ev.PasswordHash = redactedValue
		e = ev
	case TokenCreated:
		ev.Digest = redactedValue
		e = ev
	case SessionStarted:
		ev.Digest = redactedValue
		e = ev
	}
	return json.Marshal(e)
}

// CloudEvent is an event in the CloudEvents 1.0 JSON format (structured mode), with
// identityd's extension attributes and its stream sequence: the line format of
// `identityctl events tail` and `events export`, ready for a SIEM.
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            Type            `json:"type"`
	Subject         string          `json:"subject"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	DataSchema      string          `json:"dataschema"`
	Actor           string          `json:"actor,omitempty"`
	RequestID       string          `json:"requestid,omitempty"`
	SourceIP        string          `json:"sourceip,omitempty"`
	UserAgent       string          `json:"useragent,omitempty"`
	ChainHash       string          `json:"chainhash,omitempty"`
	Sequence        uint64          `json:"sequence"`
	Data            json.RawMessage `json:"data"`
}

// ToCloudEvent renders an envelope as a CloudEvent, secrets redacted, data at the current
// schema version.
func ToCloudEvent(e Envelope) (CloudEvent, error) {
	data, err := Redacted(e.Data)
	if err != nil {
		return CloudEvent{}, err
	}
	return CloudEvent{
		SpecVersion: "1.0", ID: e.ID, Source: Source, Type: e.Type, Subject: e.Subject, Time: e.Time.UTC(),
		DataContentType: "application/json", DataSchema: DataSchemaURI(e.Type, CurrentVersion(e.Type)),
		Actor: e.Metadata.Actor, RequestID: e.Metadata.RequestID, SourceIP: e.Metadata.SourceIP,
		UserAgent: e.Metadata.UserAgent, ChainHash: e.ChainHash, Sequence: e.Sequence, Data: data,
	}, nil
}
