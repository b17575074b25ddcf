//go:build faults

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/projections/dbtest"
)

// fltModuleRoot is the directory of go.mod, found with `go env GOMOD`.
func fltModuleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatalf("go env GOMOD: not inside the module (%q)", gomod)
	}
	return filepath.Dir(gomod)
}

// fltBuild builds a package of the module (or one it depends on) into dir and returns the
// binary's path.
func fltBuild(t *testing.T, pkg, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	started := time.Now()
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = fltModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	t.Logf("built %s in %s", pkg, time.Since(started).Round(time.Millisecond))
	return bin
}

// fltProc is a running subprocess whose stderr is kept.
type fltProc struct {
	cmd    *exec.Cmd
	stderr *fltLog
	done   chan struct{}
	err    error // set when done is closed
}

func fltStartProc(t *testing.T, bin string, env []string, args ...string) *fltProc {
	t.Helper()
	p := &fltProc{cmd: exec.Command(bin, args...), stderr: &fltLog{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { // a test that failed half-way leaves nothing running
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *fltProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *fltProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("process still running 10s after SIGKILL")
	}
}

// fltWaitReady polls /readyz until it answers 200.
func fltWaitReady(t *testing.T, base string, p *fltProc, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if p != nil && p.exited() {
			t.Fatalf("process exited before ready: %v\n%s", p.err, p.stderr.tail(4000))
		}
		if r := fltDo(base, "GET", "/readyz", "", nil); r.Status == http.StatusOK {
			return time.Since(start)
		}
		if time.Since(start) > within {
			tail := ""
			if p != nil {
				tail = p.stderr.tail(4000)
			}
			t.Fatalf("%s/readyz not ready within %s\n%s", base, within, tail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFaultKill9MidWrites: the identityd process is SIGKILLed under write load and started
// again on the same stream and database. Nothing acknowledged is lost, the new process serves
// every acknowledged write, and the read models verify against the stream up to its end.
func TestFaultKill9MidWrites(t *testing.T) {
	tmp := t.TempDir()
	bin := fltBuild(t, "./cmd/identityd", tmp, "identityd")

	keys := testKeys(t)
	ns, err := embedded.Start(embedded.Config{StoreDir: filepath.Join(tmp, "nats"), Keys: keys}) // fsync always
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	dbURL := dbtest.PostgresURL(t)
	addr := fmt.Sprintf("127.0.0.1:%d", fltFreePort(t))
	base := "http://" + addr
	var childEnv []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IDENTITYD_") {
			childEnv = append(childEnv, kv)
		}
	}
	childEnv = append(childEnv,
		"IDENTITYD_NATS_URL="+ns.ClientURL(),
		"IDENTITYD_NATS_CREDS="+keys.IdentitydSeed(),
		"IDENTITYD_DATABASE_URL="+dbURL,
		"IDENTITYD_HTTP_ADDR="+addr,
		"IDENTITYD_DATA_DIR="+filepath.Join(tmp, "data"),
		"IDENTITYD_SECRET_KEY="+strings.Repeat("5a", 32),
		"IDENTITYD_ARGON2_MEMORY_KIB=64",
		"IDENTITYD_ARGON2_TIME=1",
		"IDENTITYD_LOG_LEVEL=info",
	)
	var procs []*fltProc
	defer func() {
		if t.Failed() {
			for i, p := range procs {
				t.Logf("identityd process %d stderr:\n%s", i+1, p.stderr.tail(6000))
			}
		}
	}()
	first := fltStartProc(t, bin, childEnv)
	procs = append(procs, first)
	t.Logf("first process ready in %s", fltWaitReady(t, base, first, 30*time.Second).Round(time.Millisecond))

	const workers = 6
	users := fltSignUps(t, base, "kill9", workers)
	initial := func(i int) string { return fmt.Sprintf("kill9 %d", i) }

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var current atomic.Pointer[string]
	current.Store(&base)
	load := fltStartLoad(loadCtx, func() string { return *current.Load() }, users, 5000)

	time.Sleep(1500 * time.Millisecond)
	killedAt := time.Now()
	first.kill(t)
	second := fltStartProc(t, bin, childEnv)
	procs = append(procs, second)
	readyIn := fltWaitReady(t, base, second, 30*time.Second)
	readyAt := time.Now()
	t.Logf("SIGKILLed; the restarted process was ready %s after the kill (%s after its start)",
		readyAt.Sub(killedAt).Round(time.Millisecond), readyIn.Round(time.Millisecond))
	time.Sleep(2500 * time.Millisecond)
	stopLoad()
	ops := load.wait()

	var before, down, after, afterOK, inFlight int
	for _, op := range ops {
		r := op.Resp
		end := op.Start.Add(r.Dur)
		switch {
		case end.Before(killedAt):
			before++
		case op.Start.Before(killedAt):
			inFlight++ // cut by the kill: any outcome, acknowledged ones are checked below
		case op.Start.Before(readyAt):
			down++
		default:
			after++
			if r.ok() {
				afterOK++
			}
		}
		if r.Err == nil && !r.ok() && r.Status != http.StatusServiceUnavailable && r.Status != http.StatusConflict {
			t.Errorf("%s of %s: %s (want 2xx, 503 or 409)", op.Kind, op.UserID, r)
		}
		if r.Err != nil && end.Before(killedAt) {
			t.Errorf("%s of %s failed before the kill: %s", op.Kind, op.UserID, r)
		}
		if r.Err != nil && op.Start.After(readyAt) {
			t.Errorf("%s of %s failed after the restarted process was ready: %s", op.Kind, op.UserID, r)
		}
	}
	t.Logf("%d writes: %d before the kill, %d cut by it, %d while down, %d after the restart (%d ok)",
		len(ops), before, inFlight, down, after, afterOK)
	if before < workers || afterOK < workers {
		t.Errorf("the load did not cover the fault: %d writes before the kill, %d acknowledged after the restart", before, afterOK)
	}

	st := openStore(t, ns.ClientURL(), keys, 1, bytes.Repeat([]byte{0x5a}, 32)) // the processes' IDENTITYD_SECRET_KEY
	fltCheckAcked(t, st, ops)
	fltCheckReads(t, base, users, initial, ops) // read-your-writes across the restart
	fltFinalWrites(t, base, users)

	// Graceful stop: SIGTERM, exit status 0.
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("identityd still running 20s after SIGTERM\n%s", second.stderr.tail(4000))
	}
	if second.err != nil {
		t.Errorf("identityd exited with %v after SIGTERM, want status 0", second.err)
	}
	fltVerify(t, st, dbURL)
}
