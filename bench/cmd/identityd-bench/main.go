// Command identityd-bench runs identityd's benchmark scenarios side by side with in-run
// baselines against a freshly started deployment on this machine (`make bench`). See
// bench/README.md for what each scenario measures.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

type options struct {
	duration   time.Duration
	warmup     time.Duration
	full       bool
	users      int
	getConns   int
	writeConns int
	lagRate    int
	getTokens  int
	out        string
	keepTmp    bool
	debugAddr  string
	natsNodes  int
	natsSync   string
	only       map[string]bool

	memUsers, memTokens, rebuildEvents int
}

// bench is one run: the deployment and what the scenarios found.
type bench struct {
	*harness
	opt options

	pgAdminDSN, dsn, dbName string
	pgSettings              map[string]string
	db                      *bun.DB
	natsURL                 string
	natsProcs               []*proc // one, or the three nodes of a cluster
	nc                      *nats.Conn
	identityd               *proc
	crud                    *proc
	idURL                   string
	secretKey               string
	signer                  events.SigningKey // derived from secretKey, as identityd derives it

	seeded     []seededUser // created through the API
	bulkSample []string     // plaintext API tokens of bulk-seeded rows (a sample)
	runID      string
	// rawAppendRate is baseline (a) once scenario 2 measured it: the ceiling of any write path
	// that appends to the stream first.
	rawAppendRate float64

	rows []row
	meta map[string]any
}

func main() {
	var o options
	var only string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration of each load scenario")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured warm-up before each load measurement")
	flag.BoolVar(&o.full, "full", false, "full sizes for (4) and (6): 1,000,000 events; 1,000,000 users + 2,000,000 tokens (long)")
	flag.IntVar(&o.users, "users", 256, "accounts created through the API (sign-up + one API token each); >= 2 x --write-conns")
	flag.IntVar(&o.getConns, "get-conns", 64, "connections for read scenarios")
	flag.IntVar(&o.writeConns, "write-conns", 32, "connections (= distinct users) for write scenarios")
	flag.IntVar(&o.lagRate, "lag-rate", 2000, "events/s appended in the projection-lag scenario")
	flag.IntVar(&o.getTokens, "get-tokens", 20000, "distinct tokens (API-seeded + bulk-seeded) cycled through in scenario 1")
	flag.StringVar(&o.out, "out", "bench/results/latest.json", "JSON results file (relative to the repository root)")
	flag.BoolVar(&o.keepTmp, "keep-tmp", false, "keep the temp dir (logs, NATS store) instead of removing it")
	flag.StringVar(&o.debugAddr, "debug-addr", "", "serve identityd's profiling endpoints here (IDENTITYD_DEBUG_ADDR), e.g. 127.0.0.1:6060, to profile a scenario while it runs")
	flag.IntVar(&o.natsNodes, "nats-nodes", 1, "nats-server processes: 1, or 3 for a cluster on loopback (streams then have 3 replicas)")
	flag.StringVar(&o.natsSync, "nats-sync", "always", "nats-server's sync_interval: always (fsync before every ack; what identityd's promise needs on one node), or default (NATS's own default, a sync every 2 minutes: NOT durable against power loss; to see what durability costs)")
	flag.StringVar(&only, "only", "1,2,3,4,5,6,7", "comma-separated scenarios to run")
	flag.Parse()
	o.only = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.only[s] = true
		}
	}
	if o.full {
		o.memUsers, o.memTokens, o.rebuildEvents = 1_000_000, 2_000_000, 1_000_000
	} else {
		o.memUsers, o.memTokens, o.rebuildEvents = 100_000, 200_000, 100_000
	}
	if o.natsNodes != 1 && o.natsNodes != 3 {
		fmt.Fprintln(os.Stderr, "identityd-bench: --nats-nodes must be 1 or 3")
		os.Exit(2)
	}
	if o.natsSync != "always" && o.natsSync != "default" {
		fmt.Fprintln(os.Stderr, "identityd-bench: --nats-sync must be always or default")
		os.Exit(2)
	}
	if o.users < 2*o.writeConns {
		o.users = 2 * o.writeConns
	}

	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{ctx: ctx, procs: map[*proc]struct{}{}}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("got %s: stopping, cleaning up (again to force)", s)
		cancel()
		select {
		case <-sigs:
		case <-time.After(30 * time.Second):
		}
		h.cleanup()
		os.Exit(130)
	}()

	err := run(ctx, h, o)
	h.cleanup()
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "identityd-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, h *harness, o options) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	h.root = root
	h.tmp, err = os.MkdirTemp("", "identityd-bench-")
	if err != nil {
		return err
	}
	h.addCleanup(func() {
		if o.keepTmp {
			logf("kept temp dir %s", h.tmp)
			return
		}
		_ = os.RemoveAll(h.tmp)
	})
	h.bin = filepath.Join(h.tmp, "bin")
	b := &bench{harness: h, opt: o, meta: map[string]any{}}
	rid := make([]byte, 4)
	_, _ = rand.Read(rid)
	b.runID = hex.EncodeToString(rid)
	started := time.Now()

	if err := b.build(ctx); err != nil {
		return err
	}
	if err := b.startDeployment(ctx); err != nil {
		return err
	}
	b.describe()
	b.printHeader()

	// Each scenario records its rows; a failure is reported in its row and the run goes on.
	step := func(id string, f func(context.Context) error, names ...string) {
		if !o.only[id] {
			return
		}
		if ctx.Err() != nil {
			return
		}
		logf("scenario %s …", id)
		if err := f(ctx); err != nil {
			logf("scenario %s failed: %v", id, err)
			for _, n := range names {
				if !b.hasRow(n) {
					b.add(row{ID: n, Scenario: scenarioNames[n], Status: "failed", Note: firstLine(err.Error())})
				}
			}
		}
	}
	if err := b.seedAPI(ctx); err != nil {
		return fmt.Errorf("seeding through the API: %w", err)
	}
	step("6", b.scenarioMemory, "6")
	step("1", b.scenarioGet, "1", "1p99")
	step("2", b.scenarioPatch, "2a", "2b")
	step("3", b.scenarioTokens, "3")
	step("5", b.scenarioLag, "5")
	step("4", b.scenarioRebuild, "4")
	step("7", b.scenarioColdStart, "7")
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if cur, peak, err := rss(b.identityd.pid()); err == nil {
		b.meta["identityd_rss_end_kib"], b.meta["identityd_rss_peak_kib"] = cur, peak
	}
	b.meta["total_seconds"] = time.Since(started).Seconds()
	for _, id := range []string{"1", "1p99", "2a", "2b", "3", "4", "5", "6", "7"} {
		if !b.hasRow(id) {
			b.add(row{ID: id, Scenario: scenarioNames[id], Status: "not run", Note: "not selected (--only)"})
		}
	}
	b.printTable()
	return b.writeJSON()
}

// repoRoot finds the identityd module root from the working directory upwards.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/identityd/identityd") { //nolint:gosec // walking up from cwd
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the identityd repository (go.mod of github.com/identityd/identityd not found)")
		}
		dir = parent
	}
}

// build compiles identityd, identityctl, the load generator, the baselines and nats-server.
func (b *bench) build(ctx context.Context) error {
	logf("building binaries into %s", b.bin)
	if _, err := b.runCmd(ctx, "go-build", "go", []string{"build", "-o", b.bin + "/", "./cmd/identityd", "./cmd/identityctl",
		"./bench/cmd/loadgen", "./bench/cmd/baseline"}, nil); err != nil {
		return err
	}
	_, err := b.runCmd(ctx, "go-build", "go", []string{"build", "-o", filepath.Join(b.bin, "nats-server"), "github.com/nats-io/nats-server/v2"}, nil)
	return err
}

func (b *bench) binPath(name string) string { return filepath.Join(b.bin, name) }

// describe records the conditions of the run.
func (b *bench) describe() {
	host, _ := os.Hostname()
	b.meta["started_at"] = time.Now().UTC().Format(time.RFC3339)
	b.meta["host"] = host
	b.meta["cpus"] = runtime.NumCPU()
	b.meta["go"] = runtime.Version()
	b.meta["duration_s"] = b.opt.duration.Seconds()
	b.meta["warmup_s"] = b.opt.warmup.Seconds()
	b.meta["connections_get"] = b.opt.getConns
	b.meta["connections_write"] = b.opt.writeConns
	b.meta["full"] = b.opt.full
	b.meta["sizes"] = map[string]int{"api_users": b.opt.users, "memory_users": b.opt.memUsers, "memory_tokens": b.opt.memTokens, "rebuild_events": b.opt.rebuildEvents}
	b.meta["nats"] = map[string]any{"server": b.nc.ConnectedServerVersion(), "storage": "file", "sync_interval": b.syncDescription(), "replicas": b.opt.natsNodes, "nodes": b.opt.natsNodes, "url": b.natsURL}
	b.meta["postgresql"] = b.pgSettings
	b.meta["identityd"] = map[string]any{"argon2_memory_kib": argonMemKiB, "argon2_time": argonTime, "log_level": "warn", "db_pool": 16}
	b.meta["load_generator"] = "bench/cmd/loadgen: separate Go process, closed loop, HTTP/1.1 keep-alive, one worker per connection, same machine"
}
