package events

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/mail"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The published JSON Schemas (draft 2020-12) of every event payload, one file per type and
// schema version, named "<type>.v<N>.json" (e.g. "identityd.user.renamed.v2.json"), with one
// example payload each under examples/. Each schema's $id is DataSchemaURI(type, N), the
// ce-dataschema header of the events it describes.
//
//go:embed schemas
var schemaFiles embed.FS

// SchemaFS holds the published payload schemas at its root ("<type>.v<N>.json") and an example
// payload of each under "examples/". They are embedded so that the binary validates against, and
// can serve, exactly the contract it was built with. Schemas of superseded versions stay here for
// good: their events stay in the append-only stream and are still read.
var SchemaFS = mustSub(schemaFiles, "schemas")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// ErrUnknownSchema is returned by ValidatePayload for a type and version without a published
// schema.
var ErrUnknownSchema = errors.New("no published schema")

type schemaKey struct {
	t       Type
	version int
}

var payloadSchemas struct {
	once    sync.Once
	schemas map[schemaKey]*jsonschema.Schema
	err     error
}

// ValidatePayload checks an event payload (the JSON message body) against the published schema
// of its type at the given schema version: every field present and well-typed, no unknown field,
// schema_version equal to version, and formats (uuid, date-time, digests) asserted rather than
// treated as annotations. A type or version without a published schema is an error wrapping
// ErrUnknownSchema, never a silent pass, so a new event type cannot be emitted before its schema
// is written.
//
// The schemas are compiled from SchemaFS on first use, once, and are safe for concurrent use: a
// binary that never validates pays nothing, and one that does compiles them a single time.
func ValidatePayload(t Type, version int, data []byte) error {
	payloadSchemas.once.Do(func() { payloadSchemas.schemas, payloadSchemas.err = compileSchemas(SchemaFS) })
	if payloadSchemas.err != nil {
		return payloadSchemas.err
	}
	sch, ok := payloadSchemas.schemas[schemaKey{t, version}]
	if !ok {
		return fmt.Errorf("%w for %s version %d", ErrUnknownSchema, t, version)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s v%d payload: %w", t, version, err)
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s v%d payload: %w", t, version, err)
	}
	return nil
}

// compileSchemas compiles every "<type>.v<N>.json" at the root of fsys. Each is registered under
// its $id, which must equal DataSchemaURI of the type and version in its file name, so the
// ce-dataschema header always names the schema that validated the payload.
func compileSchemas(fsys fs.FS) (map[schemaKey]*jsonschema.Schema, error) {
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.RegisterFormat(&jsonschema.Format{Name: "idn-email", Validate: validateIDNEmail})
	ids := make(map[schemaKey]string, len(names))
	for _, name := range names {
		key, err := parseSchemaName(name)
		if err != nil {
			return nil, err
		}
		raw, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		obj, _ := doc.(map[string]any)
		id, _ := obj["$id"].(string)
		if want := DataSchemaURI(key.t, key.version); id != want {
			return nil, fmt.Errorf("schema %s: $id is %q, want %q", name, id, want)
		}
		if err := c.AddResource(id, doc); err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		ids[key] = id
	}
	out := make(map[schemaKey]*jsonschema.Schema, len(ids))
	for key, id := range ids {
		sch, err := c.Compile(id)
		if err != nil {
			return nil, fmt.Errorf("compile %s: %w", id, err)
		}
		out[key] = sch
	}
	return out, nil
}

// validateIDNEmail asserts the idn-email format as sign-up accepts addresses: a plain RFC 5322
// address (UTF-8 allowed, RFC 6532) without a display name. The validator library ships no
// idn-email check, and its ASCII-only "email" check would refuse addresses identityd accepts,
// so the schemas use idn-email and this check.
func validateIDNEmail(v any) error {
	s, ok := v.(string)
	if !ok {
		return nil
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return err
	}
	if a.Name != "" || a.Address != s {
		return errors.New("not a plain email address")
	}
	return nil
}

// parseSchemaName splits "identityd.user.renamed.v2.json" into its type and version.
func parseSchemaName(name string) (schemaKey, error) {
	base := strings.TrimSuffix(path.Base(name), ".json")
	i := strings.LastIndex(base, ".v")
	if i <= 0 {
		return schemaKey{}, fmt.Errorf("schema file %s: want <type>.v<N>.json", name)
	}
	v, err := strconv.Atoi(base[i+2:])
	if err != nil || v < 1 {
		return schemaKey{}, fmt.Errorf("schema file %s: want <type>.v<N>.json", name)
	}
	return schemaKey{Type(base[:i]), v}, nil
}
