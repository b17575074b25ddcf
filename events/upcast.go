package events

import (
	"encoding/json"
	"fmt"
)

// An upcaster turns the JSON payload of one schema version of an event type into the next
// version's. Events are never rewritten in the stream; they are upcast each time they are read,
// so every version ever written stays readable forever (see docs/events.md).
type upcaster func(map[string]json.RawMessage) (map[string]json.RawMessage, error)

// upcasters[type][v] upgrades version v to v+1.
var upcasters = map[Type]map[int]upcaster{
	TypeUserRenamed: {
		// v1 {old_name, name} → v2 {name, changes: {name: {before, after}}}
		1: func(p map[string]json.RawMessage) (map[string]json.RawMessage, error) {
			var before, after string
			if err := json.Unmarshal(p["old_name"], &before); err != nil {
				return nil, fmt.Errorf("old_name: %w", err)
			}
			if err := json.Unmarshal(p["name"], &after); err != nil {
				return nil, fmt.Errorf("name: %w", err)
			}
			changes, err := json.Marshal(Changes{"name": {Before: before, After: after}})
			if err != nil {
				return nil, err
			}
			delete(p, "old_name")
			p["changes"] = changes
			return p, nil
		},
	},
}

// upcast brings a payload written at version `from` to the type's current version.
func upcast(t Type, from int, data []byte) ([]byte, error) {
	to := CurrentVersion(t)
	if from == to {
		return data, nil
	}
	if from < 1 || from > to {
		return nil, fmt.Errorf("unsupported schema_version %d (this build reads 1 to %d)", from, to)
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, err
	}
	for v := from; v < to; v++ {
		up, ok := upcasters[t][v]
		if !ok {
			return nil, fmt.Errorf("no upcaster for %s v%d", t, v)
		}
		var err error
		if p, err = up(p); err != nil {
			return nil, fmt.Errorf("upcast %s v%d: %w", t, v, err)
		}
		p["schema_version"] = json.RawMessage(fmt.Sprint(v + 1))
	}
	return json.Marshal(p)
}
