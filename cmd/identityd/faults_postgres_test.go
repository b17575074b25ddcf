//go:build faults

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/cmd/internal/wiring/wiringtest"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

// fxStart starts an identityd instance of e like env.start, with this logger and the config
// changed by mutate (nil: env.start's settings).
func fxStart(e *env, logger *slog.Logger, mutate func(*wiring.Config)) *instance {
	e.T.Helper()
	cfg := testConfig(e.T, e.NATSURL, e.DBURL)
	cfg.SecretKey, cfg.BootstrapAdmin, cfg.NATSCreds = e.Secret, e.BootstrapAdmin, e.creds()
	if mutate != nil {
		mutate(&cfg)
	}
	return startInstance(e.T, cfg, logger)
}

// fxExchange is one request made off the test goroutine; its response is checked against
// openapi.yaml (fxValidate) on the test goroutine afterwards, since validate may t.Fatal.
type fxExchange struct {
	req     *http.Request
	res     response
	err     error // transport error: no answer (a hang ends as a client timeout)
	start   time.Time
	latency time.Duration
}

// code is error.code of an error envelope, "" otherwise.
func (x fxExchange) code() string {
	var b struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(x.res.Body, &b)
	return b.Error.Code
}

// fxDo sends one request like call does, without failing the test: safe on any goroutine.
func fxDo(client *http.Client, base, method, path, token string, body any, headers ...string) fxExchange {
	req, err := newRequest(base, method, path, token, body, headers...)
	if err != nil {
		return fxExchange{err: err}
	}
	x := fxExchange{req: req, start: time.Now()}
	res, err := client.Do(req)
	if err != nil {
		x.err, x.latency = err, time.Since(x.start)
		return x
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	x.latency = time.Since(x.start)
	x.res = response{Status: res.StatusCode, Header: res.Header, Body: raw}
	x.err = err
	return x
}

// fxValidate checks exchanges against openapi.yaml, on the test goroutine.
func fxValidate(t *testing.T, xs []fxExchange) {
	t.Helper()
	for _, x := range xs {
		if x.err == nil && x.req != nil {
			validate(t, x.req, x.res)
		}
	}
}

// throwawayPG is a private PostgreSQL cluster run by deploy/test-postgres.sh.
type throwawayPG struct {
	t      *testing.T
	script string
	tmp    string
	dsn    string
}

func startThrowawayPG(t *testing.T) *throwawayPG {
	t.Helper()
	tmp := t.TempDir()
	// The script runs the server as user postgres when we are root: it must reach the dir.
	for d := tmp; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()) && d != filepath.Clean(os.TempDir()); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil { //nolint:gosec // a test's own temp dir
			t.Fatal(err)
		}
	}
	script, err := filepath.Abs("../../deploy/test-postgres.sh")
	if err != nil {
		t.Fatal(err)
	}
	pg := &throwawayPG{t: t, script: script, tmp: tmp}
	t.Cleanup(func() { _, _ = pg.run("--stop") })
	if pg.dsn, err = pg.start(); err != nil {
		t.Fatal(err)
	}
	// Private to this test: in its own dir, not the script's shared fallback.
	if _, err := os.Stat(filepath.Join(tmp, "identityd-pg", "data", "PG_VERSION")); err != nil {
		t.Fatalf("the throwaway cluster is not under this test's TMPDIR %s: %v", tmp, err)
	}
	return pg
}

func (pg *throwawayPG) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{pg.script}, args...)...) //nolint:gosec // our own script
	cmd.Env = append(os.Environ(), "TMPDIR="+pg.tmp)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("test-postgres.sh %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

func (pg *throwawayPG) start() (string, error) {
	dsn, err := pg.run("--throwaway")
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(dsn, "postgres://") || !strings.Contains(dsn, "127.0.0.1") {
		return "", fmt.Errorf("test-postgres.sh printed %q, want a loopback postgres:// DSN", dsn)
	}
	return dsn, nil
}

func (pg *throwawayPG) stop() error { _, err := pg.run("--stop"); return err }

// TestFaultPostgresRestart: PostgreSQL stops for ~3 s under a steady load of reads, renames
// and sign-ups. While it is down, authenticated requests answer 503 service_unavailable in the
// envelope within 2 s (never 500, never a hang); writes that reached the stream answer 2xx with
// Identityd-Read-Model: lagging. Once it is back, the projector resumes from its checkpoint:
// every acknowledged write shows in the read model, and Verify finds nothing wrong.
func TestFaultPostgresRestart(t *testing.T) {
	pg := startThrowawayPG(t)
	natsKeys := testKeys(t)
	srv, err := embedded.Start(embedded.Config{StoreDir: t.TempDir(), Keys: natsKeys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	e := &env{wiringtest.Attach(t, srv.ClientURL(), natsKeys, pg.dsn)}
	t.Cleanup(e.Verify) // runs before the cluster stops (cleanups run last-in first-out)
	// A short consistency wait, so writes during the outage answer (lagging) well within 2 s.
	in := fxStart(e, nil, func(c *wiring.Config) { c.ConsistencyMax = 1200 * time.Millisecond })

	const workers = 4
	type worker struct {
		token, id string
		lastAcked string
	}
	ws := make([]*worker, workers)
	for i := range ws {
		tok, id := signUp(t, in.URL, fmt.Sprintf("pgw%d@example.com", i), fmt.Sprintf("Worker %d", i))
		ws[i] = &worker{token: tok, id: id, lastAcked: fmt.Sprintf("Worker %d", i)}
	}

	type op struct {
		kind string // read, rename, signup
		x    fxExchange
		name string // rename: the new name; signup: the email
	}
	client := &http.Client{Timeout: 8 * time.Second}
	var (
		mu  sync.Mutex
		ops []op
	)
	record := func(o op) {
		mu.Lock()
		ops = append(ops, o)
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 3000; n++ { // bounded; stop ends it long before
				select {
				case <-stop:
					return
				case <-time.After(15 * time.Millisecond):
				}
				record(op{kind: "read", x: fxDo(client, in.URL, "GET", "/api/v0/user", w.token, nil)})
				if n%3 == 0 {
					name := fmt.Sprintf("Worker %d rename %d", i, n)
					x := fxDo(client, in.URL, "PATCH", "/api/v0/user", w.token, map[string]string{"name": name})
					if x.err == nil && x.res.Status == 200 {
						w.lastAcked = name // only this goroutine touches w until wg.Wait
					}
					record(op{kind: "rename", x: x, name: name})
				}
			}
		}()
	}
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() { // unauthenticated writes: they reach the stream even with the database down
			defer wg.Done()
			for n := 0; n < 500; n++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				email := fmt.Sprintf("pgsignup%d-%d@example.com", g, n)
				x := fxDo(client, in.URL, "POST", "/api/v0/users", "", map[string]string{"email": email, "name": "Late " + fmt.Sprint(n), "password": "correct horse battery"})
				record(op{kind: "signup", x: x, name: email})
			}
		}()
	}
	st := e.store()
	ctx := context.Background()

	time.Sleep(1500 * time.Millisecond)
	stopAt := time.Now()
	if err := pg.stop(); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	downAt := time.Now()
	time.Sleep(3 * time.Second)
	upAt := time.Now()
	dsn, err := pg.start()
	upDone := time.Now()
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	if dsn != pg.dsn {
		close(stop)
		wg.Wait()
		t.Fatalf("the cluster came back as %s, not %s: test-postgres.sh picks the first free port on restart", dsn, pg.dsn)
	}
	// The projector resumes on its own: measure until it reaches what the stream held at restart.
	target, err := st.LastSequence(ctx)
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	for i := 0; i < 300 && in.Projector().Position() < target; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	resumed := time.Since(upDone)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("PostgreSQL: --stop took %v, down %v, --throwaway (restart) took %v; projector reached seq %d (stream end at restart) %v after the restart",
		downAt.Sub(stopAt).Round(time.Millisecond), upAt.Sub(downAt).Round(time.Millisecond), upDone.Sub(upAt).Round(time.Millisecond),
		target, resumed.Round(time.Millisecond))
	if in.Projector().Position() < target {
		t.Errorf("projector at %d, still short of %d, 15 s after the restart", in.Projector().Position(), target)
	}

	// Every answer, whenever it came: in the document, never a 500, never without an answer.
	var outage []time.Duration
	var outageReads, outageWrites503, outageLagging, outageUnavailable int
	stats := map[string]int{}
	var xs []fxExchange
	for _, o := range ops {
		x := o.x
		if x.err != nil {
			t.Errorf("%s %s: no answer after %v: %v", x.req.Method, x.req.URL.Path, x.latency, x.err)
			continue
		}
		xs = append(xs, x)
		stats[fmt.Sprintf("%s %d %s", o.kind, x.res.Status, x.code())]++
		lagging := x.res.Header.Get("Identityd-Read-Model") == "lagging"
		switch {
		case x.res.Status == 503 && x.code() != "service_unavailable":
			t.Errorf("%s answered 503 with code %q", o.kind, x.code())
		case x.res.Status >= 500 && x.res.Status != 503:
			t.Errorf("%s answered %d: %s", o.kind, x.res.Status, x.res.Body)
		case x.res.Status >= 300 && x.res.Status != 503:
			t.Errorf("%s answered %d: %s", o.kind, x.res.Status, x.res.Body)
		}
		if x.res.Status == 503 && x.res.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", o.kind)
		}
		// Requests made entirely while the server was down.
		if x.start.After(downAt) && x.start.Add(x.latency).Before(upAt) {
			outage = append(outage, x.latency)
			if x.latency >= 2*time.Second {
				t.Errorf("%s during the outage took %v", o.kind, x.latency)
			}
			switch o.kind {
			case "read":
				outageReads++
				if x.res.Status != 503 {
					t.Errorf("read during the outage answered %d: %s", x.res.Status, x.res.Body)
				}
			default:
				switch {
				case x.res.Status == 503:
					outageWrites503++
				case x.res.Status/100 == 2 && lagging:
					outageLagging++
				default:
					t.Errorf("%s %s during the outage answered %d (lagging=%v): %s", o.kind, o.name, x.res.Status, lagging, x.res.Body)
				}
			}
			if x.res.Status == 503 {
				outageUnavailable++
			}
		}
	}
	fxValidate(t, xs)
	// Reads must have met the outage; whether a sign-up also landed in it (and answered 201
	// "lagging") depends on timing, so it is reported, not required.
	if outageReads < 10 {
		t.Errorf("the outage saw %d reads; the load did not exercise it", outageReads)
	}
	sort.Slice(outage, func(i, j int) bool { return outage[i] < outage[j] })
	if len(outage) > 0 {
		t.Logf("outage: %d requests (%d answered 503, %d writes 503, %d writes 2xx lagging); latency p50 %v p99 %v max %v",
			len(outage), outageUnavailable, outageWrites503, outageLagging,
			outage[len(outage)/2], outage[len(outage)*99/100], outage[len(outage)-1])
	}
	keys := make([]string, 0, len(stats))
	for k := range stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("  %-45s %d", k, stats[k])
	}

	// First successful read after the restart.
	var firstOK time.Duration = -1
	for _, o := range ops {
		if o.kind == "read" && o.x.err == nil && o.x.res.Status == 200 && o.x.start.After(upDone) {
			if d := o.x.start.Add(o.x.latency).Sub(upDone); firstOK < 0 || d < firstOK {
				firstOK = d
			}
		}
	}
	t.Logf("first authenticated read answered 200 %v after the restart", firstOK.Round(time.Millisecond))
	if firstOK < 0 {
		t.Errorf("no read succeeded in the 2 s after the restart")
	}

	// After the restart: the projector caught up from its checkpoint, so every acknowledged
	// write is visible.
	type signup struct{ email, token string }
	var acked []signup
	for _, o := range ops {
		if o.kind == "signup" && o.x.err == nil && o.x.res.Status == 201 {
			var b struct {
				Token string `json:"token"`
			}
			if err := json.Unmarshal(o.x.res.Body, &b); err != nil {
				t.Fatal(err)
			}
			acked = append(acked, signup{o.name, b.Token})
		}
	}
	caughtUp := time.Now()
	deadline := caughtUp.Add(15 * time.Second)
	var missing []string
	for {
		missing = missing[:0]
		for _, w := range ws {
			x := fxDo(client, in.URL, "GET", "/api/v0/user", w.token, nil)
			if x.err != nil || x.res.Status != 200 {
				missing = append(missing, fmt.Sprintf("worker %s: %v %d", w.id, x.err, x.res.Status))
				continue
			}
			var u struct{ Name string }
			_ = json.Unmarshal(x.res.Body, &u)
			if u.Name != w.lastAcked {
				missing = append(missing, fmt.Sprintf("worker %s reads %q, last acknowledged rename %q", w.id, u.Name, w.lastAcked))
			}
		}
		for _, s := range acked {
			x := fxDo(client, in.URL, "GET", "/api/v0/user", s.token, nil)
			if x.err != nil || x.res.Status != 200 || !strings.Contains(string(x.res.Body), s.email) {
				missing = append(missing, fmt.Sprintf("sign-up %s: %v %d", s.email, x.err, x.res.Status))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, m := range missing {
		t.Errorf("not in the read model 15 s after the restart: %s", m)
	}
	t.Logf("read model showed every acknowledged write %v after the load stopped (%d sign-ups acknowledged)",
		time.Since(caughtUp).Round(time.Millisecond), len(acked))

	// The stream agrees: each worker's last rename there is its last acknowledged one.
	for _, w := range ws {
		hist, err := st.Load(ctx, events.UserAggregate(uuid.MustParse(w.id)), 0)
		if err != nil {
			t.Fatal(err)
		}
		last := ""
		for _, ev := range hist {
			switch d := ev.Data.(type) {
			case events.UserRegistered:
				last = d.Name
			case events.UserRenamed:
				last = d.Name
			}
		}
		if last != w.lastAcked {
			t.Errorf("worker %s: stream's last name %q, last acknowledged %q", w.id, last, w.lastAcked)
		}
	}

	// Verify: read models equal the fold of the whole stream, at the stream's end.
	streamLast, err := st.LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for in.Projector().Position() < streamLast && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	db := dbtest.Open(t, e.DBURL)
	rep, err := projections.Verify(ctx, projections.VerifyConfig{DB: db, Read: st.ReadAll, Last: st.LastSequence})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range rep.Differences {
		t.Errorf("verify: %+v", d)
	}
	if rep.Events != streamLast || rep.StreamLast != streamLast || rep.Position != streamLast {
		t.Errorf("verify folded %d events at checkpoint %d; the stream ends at %d", rep.Events, rep.Position, streamLast)
	}
	t.Logf("verify: %d events, %d users, no differences", rep.Events, rep.Users)
}
