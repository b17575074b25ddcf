//go:build faults

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/identityd/identityd/cmd/internal/wiring/wiringtest"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

// Helpers shared by the fault tests (faults_*_test.go). They are prefixed flt so they cannot
// collide with the other tests of the package. Unlike call(), they are safe to use from load
// goroutines: they never stop the test, they return what happened.

// fltFreePort picks a free loopback port by listening on port 0 and closing.
func fltFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fltLog is a goroutine-safe buffer for logs (a subprocess's stderr, an instance's slog).
type fltLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *fltLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *fltLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tail is the end of the log, for failure messages.
func (l *fltLog) tail(n int) string {
	s := l.String()
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// fltResp is one HTTP answer, or the transport error when there was none.
type fltResp struct {
	Status int
	Code   string // error.code of the envelope for a status >= 400; "(no envelope)" if malformed
	Body   []byte
	Dur    time.Duration
	Err    error
	Lag    bool // answered before the read model had the write (Identityd-Read-Model: lagging)
}

func (r fltResp) ok() bool { return r.Err == nil && r.Status >= 200 && r.Status < 300 }

func (r fltResp) String() string {
	if r.Err != nil {
		return fmt.Sprintf("transport error after %s: %v", r.Dur.Round(time.Millisecond), r.Err)
	}
	lag := ""
	if r.Lag {
		lag = " (read model lagging)"
	}
	return fmt.Sprintf("%d %s after %s%s: %.300s", r.Status, r.Code, r.Dur.Round(time.Millisecond), lag, bytes.TrimSpace(r.Body))
}

func (r fltResp) json() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(r.Body, &m)
	return m
}

var fltClient = &http.Client{Timeout: 30 * time.Second}

// fltDo sends one request and checks the error envelope of a failure (code, and request_id
// equal to X-Request-Id).
func fltDo(base, method, path, token string, body any) fltResp {
	req, err := newRequest(base, method, path, token, body)
	if err != nil {
		return fltResp{Err: err}
	}
	start := time.Now()
	res, err := fltClient.Do(req)
	if err != nil {
		return fltResp{Err: err, Dur: time.Since(start)}
	}
	raw, err := io.ReadAll(res.Body)
	_ = res.Body.Close()
	out := fltResp{Status: res.StatusCode, Body: raw, Dur: time.Since(start), Err: err, Lag: res.Header.Get("Identityd-Read-Model") != ""}
	if res.StatusCode >= 400 {
		var envl struct {
			Error struct {
				Code      string `json:"code"`
				RequestID string `json:"request_id"`
			} `json:"error"`
		}
		out.Code = "(no envelope)"
		if json.Unmarshal(raw, &envl) == nil && envl.Error.Code != "" &&
			envl.Error.RequestID != "" && envl.Error.RequestID == res.Header.Get("X-Request-Id") {
			out.Code = envl.Error.Code
		}
	}
	return out
}

// fltUser is a signed-up user the load works on.
type fltUser struct {
	ID, Token string
}

// fltSignUps creates n users through the API (in the test goroutine).
func fltSignUps(t *testing.T, base, prefix string, n int) []fltUser {
	t.Helper()
	users := make([]fltUser, n)
	for i := range users {
		users[i].Token, users[i].ID = signUp(t, base, fmt.Sprintf("%s-%d@example.com", prefix, i), fmt.Sprintf("%s %d", prefix, i))
	}
	return users
}

// fltOp is one write of the load and its outcome.
type fltOp struct {
	Worker  int
	UserID  string
	Kind    string // "rename" or "token"
	Name    string // rename: the name sent
	TokenID string // token: the id answered
	Start   time.Time
	Resp    fltResp
}

// fltLoad drives renames and token creations, one worker per user (so a worker's writes are
// sequential and its last acknowledged rename is the user's name), until ctx ends or each
// worker has sent maxOps writes.
type fltLoad struct {
	mu  sync.Mutex
	ops []fltOp
	wg  sync.WaitGroup
}

func fltStartLoad(ctx context.Context, base func() string, users []fltUser, maxOps int) *fltLoad {
	l := &fltLoad{}
	for w, u := range users {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; n < maxOps && ctx.Err() == nil; n++ {
				op := fltOp{Worker: w, UserID: u.ID, Start: time.Now()}
				if n%2 == 0 {
					op.Kind, op.Name = "rename", fmt.Sprintf("w%d n%d", w, n)
					op.Resp = fltDo(base(), "PATCH", "/api/v0/user", u.Token, map[string]string{"name": op.Name})
				} else {
					op.Kind = "token"
					op.Resp = fltDo(base(), "POST", "/api/v0/user/api-tokens", u.Token, map[string]any{"description": fmt.Sprintf("w%d n%d", w, n)})
					if op.Resp.ok() {
						if tok, _ := op.Resp.json()["api_token"].(map[string]any); tok != nil {
							op.TokenID, _ = tok["id"].(string)
						}
					}
				}
				l.mu.Lock()
				l.ops = append(l.ops, op)
				l.mu.Unlock()
				if !op.Resp.ok() {
					time.Sleep(10 * time.Millisecond) // a failing dependency: do not spin
				}
			}
		}()
	}
	return l
}

// wait waits for the workers and returns every write, in start order.
func (l *fltLoad) wait() []fltOp {
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	ops := append([]fltOp(nil), l.ops...)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Start.Before(ops[j].Start) })
	return ops
}

// fltCheckAcked fails the test for every acknowledged write that is not in the stream and
// returns the number of acknowledged writes checked.
func fltCheckAcked(t *testing.T, st *eventstore.Store, ops []fltOp) (acked int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all, err := st.ReadAll(ctx, 1, 0)
	if err != nil {
		t.Fatalf("read the stream: %v", err)
	}
	names := map[string]bool{} // user id + "\x00" + name
	tokens := map[string]bool{}
	for _, ev := range all {
		switch d := ev.Data.(type) {
		case events.UserRenamed:
			names[d.UserID.String()+"\x00"+d.Name] = true
		case events.TokenCreated:
			tokens[d.TokenID.String()] = true
		}
	}
	lost := 0
	for _, op := range ops {
		if !op.Resp.ok() {
			continue
		}
		acked++
		switch {
		case op.Kind == "rename" && !names[op.UserID+"\x00"+op.Name]:
			lost++
			t.Errorf("acknowledged rename of %s to %q (answered %s) is not in the stream", op.UserID, op.Name, op.Resp)
		case op.Kind == "token" && (op.TokenID == "" || !tokens[op.TokenID]):
			lost++
			t.Errorf("acknowledged token %q of %s (answered %s) is not in the stream", op.TokenID, op.UserID, op.Resp)
		}
	}
	t.Logf("%d acknowledged writes, %d lost; stream holds %d events", acked, lost, len(all))
	return acked
}

// fltExpectedName is what a user's name must read as after the load: the last acknowledged
// rename, unless renames that failed came after it (a failed write may still have been
// stored), in which case any of those is allowed too.
func fltExpectedName(ops []fltOp, userID, initial string) map[string]bool {
	want := map[string]bool{initial: true}
	for _, op := range ops {
		if op.UserID != userID || op.Kind != "rename" {
			continue
		}
		if op.Resp.ok() {
			want = map[string]bool{op.Name: true}
		} else {
			want[op.Name] = true
		}
	}
	return want
}

// fltCheckReads checks that an instance serves every acknowledged write of the load: each
// user's name is its last acknowledged one and every acknowledged token is listed.
func fltCheckReads(t *testing.T, base string, users []fltUser, initial func(i int) string, ops []fltOp) {
	t.Helper()
	for i, u := range users {
		r := fltDo(base, "GET", "/api/v0/user", u.Token, nil)
		if !r.ok() {
			t.Errorf("read user %s: %s", u.ID, r)
			continue
		}
		want := fltExpectedName(ops, u.ID, initial(i))
		if got, _ := r.json()["name"].(string); !want[got] {
			t.Errorf("user %s reads as %q; last acknowledged rename allows %v", u.ID, got, want)
		}
		r = fltDo(base, "GET", "/api/v0/user/api-tokens", u.Token, nil)
		if !r.ok() {
			t.Errorf("list tokens of %s: %s", u.ID, r)
			continue
		}
		listed := map[string]bool{}
		list, _ := r.json()["api_tokens"].([]any)
		for _, x := range list {
			if m, ok := x.(map[string]any); ok {
				listed[fmt.Sprint(m["id"])] = true
			}
		}
		for _, op := range ops {
			if op.UserID == u.ID && op.Kind == "token" && op.Resp.ok() && !listed[op.TokenID] {
				t.Errorf("acknowledged token %s of %s is not listed after the fault", op.TokenID, u.ID)
			}
		}
	}
}

// fltFinalWrites does one more write per user and reads it back: the writes succeed again
// and, since a write answers only once the read model has it, the projector has caught up
// with the stream.
func fltFinalWrites(t *testing.T, base string, users []fltUser) {
	t.Helper()
	for i, u := range users {
		name := fmt.Sprintf("final %d", i)
		var r fltResp
		for try := 0; try < 10; try++ { // a write racing its own earlier failed one may conflict once
			if r = fltDo(base, "PATCH", "/api/v0/user", u.Token, map[string]string{"name": name}); r.Status != http.StatusConflict {
				break
			}
		}
		if r.Status != http.StatusOK || r.Dur > 3*time.Second {
			t.Fatalf("final rename of %s: %s", u.ID, r)
		}
		if got := fltDo(base, "GET", "/api/v0/user", u.Token, nil).json()["name"]; got != name {
			t.Fatalf("read after the final rename of %s: %v, want %q", u.ID, got, name)
		}
	}
}

// fltVerify runs projections.Verify (what `identityctl verify` runs) and requires no
// difference and a read model at the stream's last sequence, every event folded.
func fltVerify(t *testing.T, st *eventstore.Store, dbURL string) projections.VerifyReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := projections.Verify(ctx, projections.VerifyConfig{DB: dbtest.Open(t, dbURL), Read: st.ReadAll, Last: st.LastSequence})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, d := range rep.Differences {
		t.Errorf("verify: %+v", d)
	}
	if rep.StreamLast == 0 || rep.Events != rep.StreamLast || rep.Position != rep.StreamLast {
		t.Errorf("verify folded %d events up to %d; the stream ends at %d", rep.Events, rep.Position, rep.StreamLast)
	}
	t.Logf("verify: %d events, %d users, no differences: %v", rep.Events, rep.Users, len(rep.Differences) == 0)
	return rep
}

// fltQuantile is the q-quantile of the durations (0 for none).
func fltQuantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1))]
}

// fltStartInstance runs an identityd instance in process (wiring.Start behind a test HTTP server)
// against the given NATS URL(s) and database; its warnings go to the returned log.
func fltStartInstance(t *testing.T, natsURL string, replicas int, dbURL string) (*instance, *fltLog) {
	t.Helper()
	logs := &fltLog{}
	cfg := testConfig(t, natsURL, dbURL)
	cfg.NATSReplicas = replicas
	in := startInstance(t, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	return in, logs
}

// TestFaultNATSRestartUnderWriteLoad: the embedded NATS server goes away for ~2 s under write
// load and comes back on the same port and store. During the outage writes fail fast with 503
// service_unavailable; nothing acknowledged is lost; afterwards writes succeed and reads see
// the last acknowledged state; the read models verify against the stream.
func TestFaultNATSRestartUnderWriteLoad(t *testing.T) {
	storeDir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", fltFreePort(t))
	keys := testKeys(t) // the same users after the restart
	startNATS := func() *server.Server {
		t.Helper()
		ns, err := embedded.Start(embedded.Config{StoreDir: storeDir, Listen: listen, Keys: keys}) // SyncInterval 0: fsync always
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	var nsMu sync.Mutex
	ns := startNATS()
	t.Cleanup(func() { // registered first: runs after the instance stopped and verify ran
		nsMu.Lock()
		defer nsMu.Unlock()
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	})
	e := &env{wiringtest.Attach(t, ns.ClientURL(), keys, dbtest.PostgresURL(t))}
	t.Cleanup(e.Verify)
	in := e.start()
	const workers = 8
	users := fltSignUps(t, in.URL, "restart", workers)
	initial := func(i int) string { return fmt.Sprintf("restart %d", i) }

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load := fltStartLoad(loadCtx, func() string { return in.URL }, users, 5000)

	time.Sleep(2 * time.Second)
	downAt := time.Now()
	nsMu.Lock()
	ns.Shutdown()
	ns.WaitForShutdown()
	ns = nil
	nsMu.Unlock()
	downDone := time.Now()
	time.Sleep(2 * time.Second)
	upAt := time.Now()
	restarted := startNATS()
	nsMu.Lock()
	ns = restarted
	nsMu.Unlock()
	upDone := time.Now()
	time.Sleep(3 * time.Second)
	stopLoad()
	ops := load.wait()
	t.Logf("NATS down for %s (shutdown took %s, restart %s)", upAt.Sub(downAt).Round(time.Millisecond),
		downDone.Sub(downAt).Round(time.Millisecond), upDone.Sub(upAt).Round(time.Millisecond))

	var outage, straddle []time.Duration
	var before, after, afterOK int
	recovered := time.Duration(-1) // from the restart to the first acknowledged write
	for _, op := range ops {
		r := op.Resp
		if r.Err != nil || (!r.ok() && r.Status != http.StatusServiceUnavailable && r.Status != http.StatusConflict) {
			t.Errorf("%s %s at %s: %s (want 2xx, 503 or 409)", op.Kind, op.UserID, op.Start.Sub(downAt).Round(time.Millisecond), r)
			continue
		}
		if (r.Status == http.StatusServiceUnavailable && r.Code != "service_unavailable") ||
			(r.Status == http.StatusConflict && r.Code != "concurrent_modification") {
			t.Errorf("%s: %s: wrong error code", op.Kind, r)
		}
		end := op.Start.Add(r.Dur)
		switch {
		case end.Before(downAt):
			before++
		case !op.Start.Before(downDone) && op.Start.Before(upAt): // entirely in the outage
			outage = append(outage, r.Dur)
			if r.Status != http.StatusServiceUnavailable || r.Dur > 2*time.Second {
				t.Errorf("write during the outage answered %s; want 503 service_unavailable within 2s", r)
			}
		case op.Start.Before(downDone): // in flight when the server went away
			straddle = append(straddle, r.Dur)
		case !op.Start.Before(upDone):
			after++
			if r.ok() {
				afterOK++
				if d := op.Start.Sub(upDone); recovered < 0 || d < recovered {
					recovered = d
				}
			}
		}
	}
	t.Logf("%d writes: %d before the outage, %d during it (503 latency p50 %s, max %s), %d in flight at shutdown (max %s), %d after the restart (%d ok)",
		len(ops), before, len(outage), fltQuantile(outage, 0.5), fltQuantile(outage, 1), len(straddle), fltQuantile(straddle, 1), after, afterOK)
	if before < workers || len(outage) < workers || after < workers {
		t.Errorf("the load did not cover the fault: %d writes before, %d during, %d after the outage", before, len(outage), after)
	}
	t.Logf("first acknowledged write started %s after the restart", recovered.Round(time.Millisecond))
	if afterOK == 0 || recovered > 2*time.Second {
		t.Errorf("writes did not recover after NATS came back: %d ok, first after %s", afterOK, recovered)
	}
	for _, d := range straddle {
		if d > 12*time.Second { // store timeout 5s, consistency timeout 10s
			t.Errorf("a write in flight at shutdown took %s", d)
		}
	}

	st := openStore(t, ns.ClientURL(), keys, 1, bytes.Repeat([]byte{7}, 32))
	fltCheckAcked(t, st, ops)
	fltCheckReads(t, in.URL, users, initial, ops)
	fltFinalWrites(t, in.URL, users)
	fltVerify(t, st, e.DBURL)
}
