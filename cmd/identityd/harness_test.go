package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/nats-io/nats.go"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/cmd/internal/wiring/wiringtest"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections/dbtest"
	"github.com/identityd/identityd/transport/httpapi"
)

// env is one deployment for a test (wiringtest.Env): in-process NATS with its keys, a real
// read-model database, verified after the scenario as `identityctl verify` verifies.
type env struct{ *wiringtest.Env }

func newEnv(t *testing.T, backend dbtest.Backend) *env { return &env{wiringtest.New(t, backend)} }

func postgresEnv(t *testing.T) *env { return newEnv(t, dbtest.Backends[0]) }

// instance is one identityd process's worth of wiring (wiring.App), served over real HTTP.
type instance = wiringtest.Instance

func (e *env) start() *instance {
	e.T.Helper()
	return e.Start()
}

// startWith starts an instance with the test configuration as edit changed it.
func (e *env) startWith(edit func(*wiring.Config)) *instance {
	e.T.Helper()
	return e.StartWith(edit)
}

// testConfig is an instance's configuration for tests (wiringtest.Config).
func testConfig(t testing.TB, natsURL, dbURL string) wiring.Config {
	return wiringtest.Config(t, natsURL, dbURL)
}

// startInstance runs the wiring behind a test HTTP server until the test ends; logger nil
// discards the logs.
func startInstance(t testing.TB, cfg wiring.Config, logger *slog.Logger) *instance {
	t.Helper()
	cfg.Logger = logger
	return wiringtest.Start(t, cfg)
}

// keyringFor trusts what instances with this secret key sign, as an auditor given their
// public key does.
func keyringFor(t testing.TB, secret []byte) *events.Keyring { return wiringtest.Keyring(t, secret) }

// store opens the event store directly, as an auditor would: with the reader's credentials,
// read-only.
func (e *env) store() *eventstore.Store { return e.Store() }

// creds is identityd's seed file, "" without authentication.
func (e *env) creds() string { return e.Creds() }

// response is an HTTP answer that has already been checked against the OpenAPI document.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.Body)
	}
	return m
}

// errCode returns error.code of an error envelope, checking the envelope's invariants.
func (r response) errCode(t *testing.T) string {
	t.Helper()
	e, ok := r.json(t)["error"].(map[string]any)
	if !ok {
		t.Fatalf("status %d without error envelope: %s", r.Status, r.Body)
	}
	if e["request_id"] != r.Header.Get("X-Request-Id") || e["request_id"] == "" {
		t.Fatalf("request_id %v != X-Request-Id %q", e["request_id"], r.Header.Get("X-Request-Id"))
	}
	if !strings.HasSuffix(e["doc_url"].(string), "/docs/errors#"+e["code"].(string)) {
		t.Fatalf("doc_url %v does not lead to the code's docs", e["doc_url"])
	}
	return e["code"].(string)
}

var (
	specOnce   sync.Once
	specDoc    *openapi3.T
	specRouter routers.Router
	specErr    error
)

func spec(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	specOnce.Do(func() {
		openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.RegisteredBodyDecoder("text/plain"))
		loader := openapi3.NewLoader()
		specDoc, specErr = loader.LoadFromData(httpapi.OpenAPI)
		if specErr != nil {
			return
		}
		if specErr = specDoc.Validate(loader.Context); specErr != nil {
			return
		}
		specDoc.Servers = nil // match any host: test servers listen on random ports
		specRouter, specErr = gorillamux.NewRouter(specDoc)
	})
	if specErr != nil {
		t.Fatalf("openapi.yaml: %v", specErr)
	}
	return specDoc, specRouter
}

// call sends a request and validates the response against the OpenAPI document: its status,
// headers and body must be what the document promises for that operation (or, for paths the
// document does not have, an error envelope).
func call(t *testing.T, base, method, path, token string, body any, headers ...string) response {
	t.Helper()
	req, err := newRequest(base, method, path, token, body, headers...)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := response{Status: res.StatusCode, Header: res.Header, Body: raw}
	validate(t, req, out)
	return out
}

func validate(t *testing.T, req *http.Request, res response) {
	t.Helper()
	if res.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s %s: no X-Request-Id header", req.Method, req.URL.Path)
	}
	doc, router := spec(t)
	vreq := req.Clone(context.Background())
	vreq.URL = &url.URL{Path: req.URL.Path, RawQuery: req.URL.RawQuery}
	route, params, err := router.FindRoute(vreq)
	if err != nil { // not in the document: must be an error envelope
		var v any
		if err := json.Unmarshal(res.Body, &v); err != nil {
			t.Fatalf("%s %s → %d: not JSON: %s", req.Method, req.URL.Path, res.Status, res.Body)
		}
		if err := doc.Components.Schemas["ErrorResponse"].Value.VisitJSON(v); err != nil {
			t.Fatalf("%s %s → %d: not an ErrorResponse: %v", req.Method, req.URL.Path, res.Status, err)
		}
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route},
		Status:                 res.Status,
		Header:                 res.Header,
		Body:                   io.NopCloser(bytes.NewReader(res.Body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Fatalf("%s %s → %d does not match openapi.yaml: %v\nbody: %s", req.Method, req.URL.Path, res.Status, err, res.Body)
	}
}

// signUp creates a user and returns its session token and id.
func signUp(t *testing.T, base, email, name string) (token, id string) {
	t.Helper()
	r := call(t, base, "POST", "/api/v0/users", "", map[string]string{"email": email, "name": name, "password": "correct horse battery"})
	if r.Status != http.StatusCreated {
		t.Fatalf("sign-up %s: %d %s", email, r.Status, r.Body)
	}
	m := r.json(t)
	return m["token"].(string), m["user"].(map[string]any)["uuid"].(string)
}

func mustStatus(t *testing.T, r response, want int) {
	t.Helper()
	if r.Status != want {
		t.Fatalf("status %d, want %d: %s", r.Status, want, r.Body)
	}
}

// checkStreamContract checks every message the service wrote against the public contract: its
// payload validates against the JSON Schema its ce-dataschema names, its CloudEvents headers
// are complete, and each aggregate's hash chain verifies.
func (e *env) checkStreamContract() {
	e.T.Helper()
	st := e.store()
	keys := st.Keys()
	ctx := context.Background()
	last, err := st.LastSequence(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	stream, err := st.JetStream().Stream(ctx, events.StreamName)
	if err != nil {
		e.T.Fatal(err)
	}
	chains := map[string]string{}
	for seq := uint64(1); seq <= last; seq++ {
		raw, err := stream.GetMsg(ctx, seq)
		if err != nil {
			e.T.Fatalf("seq %d: %v", seq, err)
		}
		h := nats.Header(raw.Header)
		typ := events.Type(h.Get(events.HeaderType))
		if err := events.ValidatePayload(typ, events.CurrentVersion(typ), raw.Data); err != nil {
			e.T.Fatalf("seq %d (%s) does not match its schema: %v\n%s", seq, typ, err, raw.Data)
		}
		for _, k := range []string{events.HeaderSpecVersion, events.HeaderID, events.HeaderSource, events.HeaderSubject,
			events.HeaderTime, events.HeaderDataContentType, events.HeaderDataSchema, events.HeaderChainHash, events.HeaderActor,
			events.HeaderKeyID, events.HeaderSignature} {
			if h.Get(k) == "" {
				e.T.Fatalf("seq %d (%s) lacks header %s", seq, typ, k)
			}
		}
		env, err := keys.Decode(raw.Subject, h, raw.Data, seq)
		if err != nil {
			e.T.Fatal(err)
		}
		if events.ChainHash(chains[env.Subject], env.ContentHash) != env.ChainHash {
			e.T.Fatalf("seq %d breaks the hash chain of %s", seq, env.Subject)
		}
		chains[env.Subject] = env.ChainHash
	}
}

// newRequest builds an API request: body is sent as is (string, []byte) or as JSON, with a
// bearer token and extra headers as name, value pairs. The harness and the fault tests share it.
func newRequest(base, method, path, token string, body any, headers ...string) (*http.Request, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return req, nil
}

// waitFor polls cond every few milliseconds until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("condition not met within %s", d)
		}
	}
}

// natsTestCredentials are the connect options of a client holding publish rights on the
// stream, as identityd does (the attacker the signature defends against).
func natsTestCredentials(t *testing.T, e *env) []nats.Option {
	t.Helper()
	if e.Keys.Dir == "" {
		return nil
	}
	opts, err := embedded.ClientOptions(e.creds(), true)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}
