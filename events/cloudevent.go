package events

import (
	"encoding/json"
	"time"
)

// secretFields are payload fields never shown outside the stream itself (audit log, exports).
var secretFields = []string{"password_hash", "digest"}

// Redacted is the payload as JSON with secret fields replaced by "[redacted]".
func Redacted(e Event) (json.RawMessage, error) {
	raw, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	for _, f := range secretFields {
		if _, ok := fields[f]; ok {
			fields[f] = json.RawMessage(`"[redacted]"`)
		}
	}
	return json.Marshal(fields)
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
