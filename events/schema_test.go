package events_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/identityd/identityd/events"
)

const asyncAPIPath = "../docs/asyncapi.yaml"

// schemaRef is one published schema file: "<type>.v<N>.json".
type schemaRef struct {
	name    string
	typ     events.Type
	version int
}

func parseRef(t *testing.T, name string) schemaRef {
	t.Helper()
	base := strings.TrimSuffix(filepath.Base(name), ".json")
	i := strings.LastIndex(base, ".v")
	if i <= 0 {
		t.Fatalf("%s: want <type>.v<N>.json", name)
	}
	v, err := strconv.Atoi(base[i+2:])
	if err != nil || v < 1 {
		t.Fatalf("%s: want <type>.v<N>.json", name)
	}
	return schemaRef{name: filepath.Base(name), typ: events.Type(base[:i]), version: v}
}

func globRefs(t *testing.T, pattern string) []schemaRef {
	t.Helper()
	names, err := fs.Glob(events.SchemaFS, pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatalf("no files match %s in SchemaFS", pattern)
	}
	refs := make([]schemaRef, len(names))
	for i, n := range names {
		refs[i] = parseRef(t, n)
	}
	return refs
}

func readJSON(t *testing.T, fsys fs.FS, name string) map[string]any {
	t.Helper()
	raw, err := fs.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every type the registry knows has a schema for each version from 1 to the one this build
// writes (renamed: 1 and 2), and no schema describes a type the registry does not know.
func TestSchemaForEveryTypeAndVersion(t *testing.T) {
	have := map[events.Type][]int{}
	for _, r := range globRefs(t, "*.json") {
		have[r.typ] = append(have[r.typ], r.version)
	}
	types := events.Types()
	if len(types) != 12 {
		t.Errorf("Types() has %d types, want 12", len(types))
	}
	for _, typ := range types {
		if !slices.Contains(have[typ], 1) {
			t.Errorf("%s: no schema for version 1", typ)
		}
		for v := 1; v <= events.CurrentVersion(typ); v++ {
			if !slices.Contains(have[typ], v) {
				t.Errorf("%s: no schema for version %d (current is %d)", typ, v, events.CurrentVersion(typ))
			}
		}
	}
	if !slices.Contains(have[events.TypeUserRenamed], 2) {
		t.Errorf("%s: no schema for version 2", events.TypeUserRenamed)
	}
	if got := events.CurrentVersion(events.TypeUserRenamed); got != 2 {
		t.Errorf("current version of %s is %d, want 2", events.TypeUserRenamed, got)
	}
	for typ, versions := range have {
		if !slices.Contains(types, typ) {
			t.Errorf("schema for unknown type %s", typ)
		}
		if cur := events.CurrentVersion(typ); slices.Max(versions) > cur {
			t.Errorf("%s: schema v%d is newer than the version written (%d)", typ, slices.Max(versions), cur)
		}
	}
}

// Each schema is a closed, documented description whose $id is the ce-dataschema value.
func TestSchemaDocuments(t *testing.T) {
	for _, r := range globRefs(t, "*.json") {
		doc := readJSON(t, events.SchemaFS, r.name)
		if got, want := doc["$id"], events.DataSchemaURI(r.typ, r.version); got != want {
			t.Errorf("%s: $id %v, want %s", r.name, got, want)
		}
		if doc["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema %v, want draft 2020-12", r.name, doc["$schema"])
		}
		for _, k := range []string{"title", "description"} {
			if s, _ := doc[k].(string); s == "" {
				t.Errorf("%s: no %s", r.name, k)
			}
		}
		checkClosed(t, r.name, "", doc)
		props := doc["properties"].(map[string]any)
		sv, _ := props["schema_version"].(map[string]any)
		if sv["const"] != float64(r.version) {
			t.Errorf("%s: schema_version const %v, want %d", r.name, sv["const"], r.version)
		}
	}
}

// optionalFields lists, per schema file, the properties (as /path/to/field) added to a
// published version without a new version (docs/events.md, "Changes that need no new version").
// Events written before such a field existed lack it, so it is the one kind of property that
// may be left out of "required". Every other property is required.
var optionalFields = map[string][]string{}

// checkClosed walks object schemas: every property described, required (unless listed in
// optionalFields), and no others allowed.
func checkClosed(t *testing.T, file, at string, s map[string]any) {
	t.Helper()
	props, ok := s["properties"].(map[string]any)
	if !ok {
		return
	}
	if s["additionalProperties"] != false {
		t.Errorf("%s%s: additionalProperties must be false", file, at)
	}
	var required []string
	for _, r := range s["required"].([]any) {
		required = append(required, r.(string))
	}
	for name, p := range props {
		p := p.(map[string]any)
		if d, _ := p["description"].(string); d == "" {
			t.Errorf("%s%s/%s: no description", file, at, name)
		}
		optional := slices.Contains(optionalFields[file], at+"/"+name)
		if slices.Contains(required, name) == optional {
			t.Errorf("%s%s: %s: required must be %v", file, at, name, !optional)
		}
		checkClosed(t, file, at+"/"+name, p)
	}
	for _, r := range required {
		if _, ok := props[r]; !ok {
			t.Errorf("%s%s: required %s is not a property", file, at, r)
		}
	}
}

// Every published example is valid, and every schema has one.
func TestExamplesValidate(t *testing.T) {
	examples := globRefs(t, "examples/*.json")
	for _, r := range globRefs(t, "*.json") {
		if !slices.ContainsFunc(examples, func(e schemaRef) bool { return e.name == r.name }) {
			t.Errorf("%s: no example", r.name)
		}
	}
	for _, r := range examples {
		raw, err := fs.ReadFile(events.SchemaFS, "examples/"+r.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := events.ValidatePayload(r.typ, r.version, raw); err != nil {
			t.Errorf("example %s: %v", r.name, err)
		}
	}
}

// Breaking an example in any of the ways a writer bug would must fail validation.
func TestMutatedExamplesFail(t *testing.T) {
	type mutation struct {
		name string
		want string // substring of the validation error
		f    func(map[string]any)
	}
	for _, r := range globRefs(t, "examples/*.json") {
		orig := readJSON(t, events.SchemaFS, "examples/"+r.name)
		var muts []mutation
		for field := range orig {
			muts = append(muts, mutation{"missing " + field, field, func(p map[string]any) { delete(p, field) }})
		}
		muts = append(muts,
			mutation{"extra field", "unexpected", func(p map[string]any) { p["unexpected"] = "x" }},
			mutation{"next schema_version", "/schema_version", func(p map[string]any) { p["schema_version"] = r.version + 1 }},
			mutation{"schema_version 0", "/schema_version", func(p map[string]any) { p["schema_version"] = 0 }},
			mutation{"schema_version as string", "/schema_version", func(p map[string]any) { p["schema_version"] = strconv.Itoa(r.version) }},
			mutation{"bad uuid", "/user_id", func(p map[string]any) { p["user_id"] = "not-a-uuid" }},
			mutation{"upper-case uuid", "/user_id", func(p map[string]any) { p["user_id"] = strings.ToUpper(p["user_id"].(string)) }},
			mutation{"numeric user_id", "/user_id", func(p map[string]any) { p["user_id"] = 42 }},
		)
		for _, f := range []string{"registered_at", "created_at", "expires_at", "started_at"} {
			if _, ok := orig[f]; ok {
				muts = append(muts, mutation{"bad date-time " + f, "/" + f, func(p map[string]any) { p[f] = "14/03/2025 09:26" }})
			}
		}
		for _, f := range []string{"digest", "email_hash"} {
			if _, ok := orig[f]; ok {
				muts = append(muts,
					mutation{"short " + f, "/" + f, func(p map[string]any) { p[f] = p[f].(string)[:63] }},
					mutation{"upper-case " + f, "/" + f, func(p map[string]any) { p[f] = strings.ToUpper(p[f].(string)) }})
			}
		}
		if _, ok := orig["email"]; ok {
			muts = append(muts, mutation{"bad email", "/email", func(p map[string]any) { p["email"] = "Ada <ada@example.com>" }})
		}
		if _, ok := orig["password_hash"]; ok {
			muts = append(muts, mutation{"bcrypt hash", "/password_hash", func(p map[string]any) {
				p["password_hash"] = "$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
			}})
		}
		if _, ok := orig["changes"]; ok {
			muts = append(muts,
				mutation{"changes without name", "/changes", func(p map[string]any) { p["changes"] = map[string]any{} }},
				mutation{"secret in changes", "password", func(p map[string]any) {
					p["changes"].(map[string]any)["password"] = map[string]any{"before": "a", "after": "b"}
				}},
				mutation{"change without before", "before", func(p map[string]any) {
					delete(p["changes"].(map[string]any)["name"].(map[string]any), "before")
				}})
		}
		for _, m := range muts {
			p := readJSON(t, events.SchemaFS, "examples/"+r.name)
			m.f(p)
			err := events.ValidatePayload(r.typ, r.version, mustJSON(t, p))
			if err == nil {
				t.Errorf("%s with %s: valid, want an error", r.name, m.name)
			} else if !strings.Contains(err.Error(), m.want) {
				t.Errorf("%s with %s: error %q does not mention %q", r.name, m.name, err, m.want)
			}
		}
	}
}

func TestValidatePayloadEdgeCases(t *testing.T) {
	reg, err := fs.ReadFile(events.SchemaFS, "examples/identityd.user.registered.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		typ     events.Type
		version int
	}{{"identityd.user.unknown", 1}, {events.TypeUserRegistered, 0}, {events.TypeUserRegistered, 2}, {events.TypeUserRenamed, 3}} {
		if err := events.ValidatePayload(c.typ, c.version, reg); !errors.Is(err, events.ErrUnknownSchema) {
			t.Errorf("%s v%d: error %v, want ErrUnknownSchema", c.typ, c.version, err)
		}
	}
	for _, bad := range []string{``, `{`, `[]`, `null`, `{"schema_version":1}`} {
		if err := events.ValidatePayload(events.TypeUserDeleted, 1, []byte(bad)); err == nil {
			t.Errorf("payload %q: valid, want an error", bad)
		}
	}
	// Sign-up accepts internationalized addresses (net/mail, RFC 6532); so must the schema.
	var p map[string]any
	if err := json.Unmarshal(reg, &p); err != nil {
		t.Fatal(err)
	}
	p["email"] = "jörg@exämple.com"
	if err := events.ValidatePayload(events.TypeUserRegistered, 1, mustJSON(t, p)); err != nil {
		t.Errorf("internationalized email: %v", err)
	}
	// A token without an expiry has expires_at null.
	tok, err := fs.ReadFile(events.SchemaFS, "examples/identityd.user.token_created.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	p = nil
	if err := json.Unmarshal(tok, &p); err != nil {
		t.Fatal(err)
	}
	p["expires_at"] = nil
	if err := events.ValidatePayload(events.TypeTokenCreated, 1, mustJSON(t, p)); err != nil {
		t.Errorf("token without expiry: %v", err)
	}
}

// The schemas compile once, lazily, and validate concurrently (run with -race).
func TestValidatePayloadConcurrent(t *testing.T) {
	raw, err := fs.ReadFile(events.SchemaFS, "examples/identityd.user.renamed.v2.json")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- events.ValidatePayload(events.TypeUserRenamed, 2, raw)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// What Encode writes matches the published contract: the body its ce-dataschema names, and the
// headers the AsyncAPI document describes.
func TestEncodedEventsMatchContract(t *testing.T) {
	headers := compileHeaderSchema(t)
	user := uuid.MustParse("0192f3a4-5b6c-7d8e-9f01-23456789abcd")
	session := uuid.MustParse("0192f3a4-5b6d-7a01-b2c3-d4e5f6a7b8c9")
	token := uuid.MustParse("0192f3a6-0c1d-7e2f-8a3b-4c5d6e7f8091")
	email := events.EmailAggregate("ada@example.com").ID
	digest := strings.Repeat("ab", 32)
	at := time.Date(2025, 3, 14, 9, 26, 53, 589793000, time.UTC)
	exp := at.Add(24 * time.Hour)
	v := events.V()
	evs := []events.Event{
		events.UserRegistered{Versioned: v, UserID: user, Email: "ada@example.com", Name: "Ada Lovelace",
			PersonalOrgSlug: "ada-lovelace-pxh2k5tc2vel", RegisteredAt: at},
		events.Renamed(user, "Ada Lovelace", "Ada King"),
		events.PasswordSet{Versioned: v, UserID: user,
			PasswordHash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Yv0ErtO0Ly0lmW4Vu2rLHQ5cR9WwUyuMnh4nFyLDhIo"},
		events.TokenCreated{Versioned: v, UserID: user, TokenID: token, Description: "laptop", Digest: digest, CreatedAt: at, ExpiresAt: &exp},
		events.TokenCreated{Versioned: v, UserID: user, TokenID: token, Digest: digest, CreatedAt: at},
		events.TokenRevoked{Versioned: v, UserID: user, TokenID: token},
		events.SessionStarted{Versioned: v, UserID: user, SessionID: session, Digest: digest, StartedAt: at, ExpiresAt: exp},
		events.SessionEnded{Versioned: v, UserID: user, SessionID: session},
		events.AdminGranted{Versioned: v, UserID: user},
		events.AdminRevoked{Versioned: v, UserID: user},
		events.UserDeleted{Versioned: v, UserID: user},
		events.EmailClaimed{Versioned: v, EmailHash: email, UserID: user},
		events.EmailReleased{Versioned: v, EmailHash: email, UserID: user},
	}
	metas := []events.Metadata{
		{Actor: "user:" + user.String() + "/session:" + session.String(), RequestID: "req_01J8Z", SourceIP: "2001:db8::1", UserAgent: "curl/8.5.0"},
		{Actor: "anonymous", RequestID: "req_01J90", SourceIP: "192.0.2.10", UserAgent: "Mozilla/5.0"},
		{Actor: "system"},
	}
	covered := map[events.Type]bool{}
	prev := ""
	for i, e := range evs {
		id := uuid.New().String()
		m, chain, err := events.Encode(events.TestKey, id, at, metas[i%len(metas)], prev, e)
		if err != nil {
			t.Fatalf("encode %s: %v", e.EventType(), err)
		}
		prev = chain
		m.Header.Set("Nats-Msg-Id", id) // set by the event store on every append
		typ := events.Type(m.Header.Get(events.HeaderType))
		covered[typ] = true
		schema := m.Header.Get(events.HeaderDataSchema)
		if want := events.DataSchemaURI(typ, events.CurrentVersion(typ)); schema != want {
			t.Errorf("%s: ce-dataschema %s, want %s", typ, schema, want)
		}
		ver, err := strconv.Atoi(schema[strings.LastIndex(schema, ":v")+2:])
		if err != nil {
			t.Fatalf("%s: ce-dataschema %q", typ, schema)
		}
		if err := events.ValidatePayload(typ, ver, m.Data); err != nil {
			t.Errorf("%s: encoded payload: %v\n%s", typ, err, m.Data)
		}
		h := map[string]any{}
		for k, vs := range m.Header {
			if len(vs) != 1 {
				t.Errorf("%s: header %s has %d values", typ, k, len(vs))
			}
			h[k] = vs[0]
		}
		if err := headers.Validate(h); err != nil {
			t.Errorf("%s: headers: %v\n%v", typ, err, h)
		}
		subj := strings.Split(m.Subject, ".")
		if want := string(typ)[strings.LastIndexByte(string(typ), '.')+1:]; subj[len(subj)-1] != want {
			t.Errorf("%s: subject %s does not end in .%s", typ, m.Subject, want)
		}
	}
	for _, typ := range events.Types() {
		if !covered[typ] {
			t.Errorf("%s: not covered by this test", typ)
		}
	}
}

// Events already in streams stay valid against the schema their ce-dataschema names, forever.
func TestStoredEventsValidate(t *testing.T) {
	f, err := os.Open("testdata/v1-stream.jsonl")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no recorded stream")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var rec struct {
			Seq     uint64            `json:"seq"`
			Headers map[string]string `json:"headers"`
			Data    json.RawMessage   `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		typ := events.Type(rec.Headers[events.HeaderType])
		schema := rec.Headers[events.HeaderDataSchema]
		ver, err := strconv.Atoi(schema[strings.LastIndex(schema, ":v")+2:])
		if err != nil || schema != events.DataSchemaURI(typ, ver) {
			t.Errorf("seq %d: ce-dataschema %q", rec.Seq, schema)
			continue
		}
		if err := events.ValidatePayload(typ, ver, rec.Data); err != nil {
			t.Errorf("seq %d: %v", rec.Seq, err)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("no events in testdata/v1-stream.jsonl")
	}
}

func loadAsyncAPI(t *testing.T) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(asyncAPIPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s is not valid YAML: %v", asyncAPIPath, err)
	}
	return doc
}

// obj follows a path of keys through decoded YAML maps.
func obj(t *testing.T, v any, path ...string) map[string]any {
	t.Helper()
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: not an object", strings.Join(path, "."))
		}
		v = m[k]
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: not an object", strings.Join(path, "."))
	}
	return m
}

// compileHeaderSchema compiles components.schemas.CloudEventsHeaders of the AsyncAPI document.
func compileHeaderSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	s := obj(t, loadAsyncAPI(t), "components", "schemas", "CloudEventsHeaders")
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(mustJSON(t, s)))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	const id = "urn:identityd:asyncapi:CloudEventsHeaders"
	if err := c.AddResource(id, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(id)
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// The AsyncAPI document is valid YAML, each message's payload $ref names an existing schema file
// whose $id matches the message, and every schema file is the payload of some message.
func TestAsyncAPI(t *testing.T) {
	doc := loadAsyncAPI(t)
	if doc["asyncapi"] != "3.0.0" {
		t.Errorf("asyncapi: %v, want 3.0.0", doc["asyncapi"])
	}
	if obj(t, doc, "info")["title"] != "identityd events" {
		t.Errorf("info.title: %v", obj(t, doc, "info")["title"])
	}
	referenced := map[string]bool{}
	for key, m := range obj(t, doc, "components", "messages") {
		msg := m.(map[string]any)
		ref, _ := obj(t, msg, "payload")["$ref"].(string)
		if !strings.HasPrefix(ref, "../events/schemas/") {
			t.Errorf("message %s: payload $ref %q is not under ../events/schemas/", key, ref)
			continue
		}
		file := filepath.Join(filepath.Dir(asyncAPIPath), filepath.FromSlash(ref))
		if _, err := os.Stat(file); err != nil {
			t.Errorf("message %s: payload $ref %s: %v", key, ref, err)
			continue
		}
		r := parseRef(t, ref)
		referenced[r.name] = true
		if msg["name"] != string(r.typ) {
			t.Errorf("message %s: name %v, but its payload is %s", key, msg["name"], r.name)
		}
		if h, _ := obj(t, msg, "headers")["$ref"].(string); h != "#/components/schemas/CloudEventsHeaders" {
			t.Errorf("message %s: headers $ref %q", key, h)
		}
	}
	for _, r := range globRefs(t, "*.json") {
		if !referenced[r.name] {
			t.Errorf("schema %s is not the payload of any message", r.name)
		}
	}
	// Every channel message and operation reference resolves.
	resolve := func(ref string) bool {
		if !strings.HasPrefix(ref, "#/") {
			return false
		}
		var v any = doc
		for _, k := range strings.Split(ref[2:], "/") {
			m, ok := v.(map[string]any)
			if !ok {
				return false
			}
			if v, ok = m[k]; !ok {
				return false
			}
		}
		return true
	}
	for name, c := range obj(t, doc, "channels") {
		ch := c.(map[string]any)
		for p := range obj(t, ch, "parameters") {
			if addr, _ := ch["address"].(string); !strings.Contains(addr, "{"+p+"}") {
				t.Errorf("channel %s: parameter %s not in address %q", name, p, addr)
			}
		}
		for _, m := range obj(t, ch, "messages") {
			if ref, _ := m.(map[string]any)["$ref"].(string); !resolve(ref) {
				t.Errorf("channel %s: unresolved %q", name, ref)
			}
		}
	}
	for name, o := range obj(t, doc, "operations") {
		op := o.(map[string]any)
		if op["action"] != "receive" {
			t.Errorf("operation %s: action %v", name, op["action"])
		}
		if ref, _ := obj(t, op, "channel")["$ref"].(string); !resolve(ref) {
			t.Errorf("operation %s: unresolved channel %q", name, ref)
		}
		msgs, _ := op["messages"].([]any)
		for _, m := range msgs {
			if ref, _ := m.(map[string]any)["$ref"].(string); !resolve(ref) {
				t.Errorf("operation %s: unresolved %q", name, ref)
			}
		}
	}
}
