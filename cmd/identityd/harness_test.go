package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/nats-io/nats.go"

	"github.com/identityd/identityd/cmd/internal/eventkeys"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/credcache"
	"github.com/identityd/identityd/projections/dbtest"
	"github.com/identityd/identityd/transport/httpapi"
)

// env is one deployment for a test: a real NATS JetStream server (in-process, random port,
// temp dir) and a real read-model database, shared by every instance the test starts.
type env struct {
	t       *testing.T
	natsURL string
	keys    embedded.Keys // the NATS users; zero for a server without authentication
	dbURL   string
	secret  []byte
	// bootstrapAdmin is IDENTITYD_BOOTSTRAP_ADMIN of the instances the test starts.
	bootstrapAdmin string
	// forged and replayed are the stream positions of events a test forged or replayed on
	// purpose: verify must report exactly these, as signature_invalid and hash_chain_broken.
	forged, replayed []uint64
}

func newEnv(t *testing.T, backend dbtest.Backend) *env {
	t.Helper()
	keys := testKeys(t)
	srv, err := embedded.Start(embedded.Config{StoreDir: t.TempDir(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	e := &env{t: t, natsURL: srv.ClientURL(), keys: keys, dbURL: backend.URL(t), secret: bytes.Repeat([]byte{7}, 32)}
	// After every scenario, once its instances have stopped: the read models and the hash
	// chains must agree with the fold of the stream (what `identityctl verify` checks).
	t.Cleanup(e.verify)
	return e
}

// verify runs the same check as `identityctl verify` and fails the test on any difference.
func (e *env) verify() {
	e.t.Helper()
	st := e.store()
	db := dbtest.Open(e.t, e.dbURL)
	rep, err := projections.Verify(context.Background(), projections.VerifyConfig{
		DB:   db,
		Read: st.ReadAll,
		Last: st.LastSequence,
	})
	if err != nil {
		e.t.Fatalf("verify: %v", err)
	}
	var forged, replayed []uint64
	for _, d := range rep.Differences {
		switch {
		case d.Kind == "signature_invalid" && slices.Contains(e.forged, d.Sequence):
			forged = append(forged, d.Sequence)
		case d.Kind == "hash_chain_broken" && slices.Contains(e.replayed, d.Sequence):
			replayed = append(replayed, d.Sequence)
		default:
			e.t.Errorf("verify: %+v", d)
		}
	}
	if len(forged) != len(e.forged) || len(replayed) != len(e.replayed) {
		e.t.Errorf("verify reported forged events at %v and replays at %v, want %v and %v", forged, replayed, e.forged, e.replayed)
	}
	if rep.Events == 0 && rep.StreamLast > 0 {
		e.t.Errorf("verify checked nothing: read model at %d of %d", rep.Position, rep.StreamLast)
	}
}

func postgresEnv(t *testing.T) *env { return newEnv(t, dbtest.Backends[0]) }

// instance is one identityd process's worth of wiring, served over real HTTP.
type instance struct {
	app *app
	url string
}

func (e *env) start() *instance {
	e.t.Helper()
	return e.startWith(func(*config) {})
}

// startWith starts an instance with the test configuration as edit changed it.
func (e *env) startWith(edit func(*config)) *instance {
	e.t.Helper()
	cfg := testConfig(e.t, e.natsURL, e.dbURL)
	cfg.SecretKey, cfg.BootstrapAdmin, cfg.NATSCreds = e.secret, e.bootstrapAdmin, e.creds()
	edit(&cfg)
	return startInstance(e.t, cfg, nil)
}

// testConfig is an instance's configuration for tests: the given NATS and database, a temp
// data dir, a cheap argon2id, and a long read-your-writes wait for slow shared machines.
func testConfig(t testing.TB, natsURL, dbURL string) config {
	return config{
		HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), NATSURL: natsURL, NATSReplicas: 1,
		DatabaseURL: dbURL, SecretKey: bytes.Repeat([]byte{7}, 32), LogLevel: slog.LevelWarn,
		SessionTTL: time.Hour, Argon2MemKiB: 64, Argon2Time: 1, ConsistencyMax: 10 * time.Second,
		CacheLease: 10 * time.Millisecond, CacheEntries: 100_000, // the defaults
		// The registry's defaults scaled down tenfold, so an instance takes leases after 300ms.
		Presence: credcache.PresenceConfig{TTL: time.Second, Refresh: 200 * time.Millisecond, Grace: 300 * time.Millisecond,
			Margin: 100 * time.Millisecond, ViewEvery: 50 * time.Millisecond, Timeout: 100 * time.Millisecond},
	}
}

// startInstance runs newApp behind a test HTTP server until the test ends; logger nil
// discards the logs.
func startInstance(t testing.TB, cfg config, logger *slog.Logger) *instance {
	t.Helper()
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := newApp(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a.api)
	a.api.SetPublicURL(hs.URL)
	t.Cleanup(func() { hs.Close(); a.close() })
	return &instance{app: a, url: hs.URL}
}

// keyring trusts what instances with this secret key sign, as an auditor given their
// public key does.
func keyringFor(t testing.TB, secret []byte) *events.Keyring {
	t.Helper()
	signer, err := eventkeys.Signer(secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	return events.NewKeyring(0, signer.PublicKey())
}

// store opens the event store directly, as an auditor would: with the reader's credentials,
// read-only.
func (e *env) store() *eventstore.Store {
	e.t.Helper()
	return openStore(e.t, e.natsURL, e.keys, 0, e.secret)
}

// identitydStore opens the event store read-only with identityd's key, which may also list and
// read the server's other streams.
func (e *env) identitydStore() *eventstore.Store {
	e.t.Helper()
	opts, err := embedded.ClientOptions(e.creds(), true)
	if err != nil {
		e.t.Fatal(err)
	}
	nc, err := nats.Connect(e.natsURL, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	st, err := eventstore.Open(context.Background(), eventstore.Config{Conn: nc, Keys: keyringFor(e.t, e.secret), ReadOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// creds is identityd's seed file, "" without authentication.
func (e *env) creds() string {
	if e.keys.Dir == "" {
		return ""
	}
	return e.keys.IdentitydSeed()
}

// testKeys creates the NATS users of a test's server.
func testKeys(t testing.TB) embedded.Keys {
	t.Helper()
	k, err := embedded.LoadOrCreateKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// openStore opens the event store at url as an auditor would, trusting what instances with
// secret sign: read-only with the reader's key, or, on a server without authentication (zero
// keys), creating or updating the stream with the given replicas as deployed.
func openStore(t testing.TB, url string, keys embedded.Keys, replicas int, secret []byte) *eventstore.Store {
	t.Helper()
	var opts []nats.Option
	if keys.Dir != "" {
		var err error
		if opts, err = embedded.ClientOptions(keys.ReaderSeed(), false); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := eventstore.Open(ctx, eventstore.Config{Conn: nc, Replicas: replicas, ReadOnly: true, Keys: keyringFor(t, secret)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

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
	e.t.Helper()
	st := e.store()
	keys := st.Keys()
	ctx := context.Background()
	last, err := st.LastSequence(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	stream, err := st.JetStream().Stream(ctx, events.StreamName)
	if err != nil {
		e.t.Fatal(err)
	}
	chains := map[string]string{}
	for seq := uint64(1); seq <= last; seq++ {
		raw, err := stream.GetMsg(ctx, seq)
		if err != nil {
			e.t.Fatalf("seq %d: %v", seq, err)
		}
		h := nats.Header(raw.Header)
		typ := events.Type(h.Get(events.HeaderType))
		if err := events.ValidatePayload(typ, events.CurrentVersion(typ), raw.Data); err != nil {
			e.t.Fatalf("seq %d (%s) does not match its schema: %v\n%s", seq, typ, err, raw.Data)
		}
		for _, k := range []string{events.HeaderSpecVersion, events.HeaderID, events.HeaderSource, events.HeaderSubject,
			events.HeaderTime, events.HeaderDataContentType, events.HeaderDataSchema, events.HeaderChainHash, events.HeaderActor,
			events.HeaderKeyID, events.HeaderSignature} {
			if h.Get(k) == "" {
				e.t.Fatalf("seq %d (%s) lacks header %s", seq, typ, k)
			}
		}
		env, err := keys.Decode(raw.Subject, h, raw.Data, seq)
		if err != nil {
			e.t.Fatal(err)
		}
		if events.ChainHash(chains[env.Subject], env.ContentHash) != env.ChainHash {
			e.t.Fatalf("seq %d breaks the hash chain of %s", seq, env.Subject)
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
	if e.keys.Dir == "" {
		return nil
	}
	opts, err := embedded.ClientOptions(e.creds(), true)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}
