package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections"
)

// loadResult is the load generator's JSON answer.
type loadResult struct {
	Scenario    string             `json:"scenario"`
	URL         string             `json:"url"`
	Connections int                `json:"connections"`
	DurationS   float64            `json:"duration_s"`
	Requests    int64              `json:"requests"`
	Errors      int64              `json:"errors"`
	RPS         float64            `json:"rps"`
	P50ms       float64            `json:"p50_ms"`
	P90ms       float64            `json:"p90_ms"`
	P99ms       float64            `json:"p99_ms"`
	MaxMs       float64            `json:"max_ms"`
	Status      map[string]int     `json:"status"`
	FirstError  string             `json:"first_error,omitempty"`
	Unit        string             `json:"unit"`
	CPU         map[string]float64 `json:"cpu,omitempty"`
}

// load runs the load generator process against url and returns what it measured.
func (b *bench) load(ctx context.Context, label, url, scenario, tokens string, conns int, target *proc) (loadResult, error) {
	var res loadResult
	args := []string{"--url", url, "--scenario", scenario, "--connections", strconv.Itoa(conns),
		"--duration", b.opt.duration.String(), "--warmup", b.opt.warmup.String()}
	if tokens != "" {
		args = append(args, "--tokens", tokens)
	}
	snap := b.cpuNow(target)
	out, err := b.runCmd(ctx, "loadgen-"+label, b.binPath("loadgen"), args, nil)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("loadgen output %q: %w", out, err)
	}
	res.CPU = b.cpuSince(snap, target, res.RPS)
	logf("  %-28s %9.0f %s  p50 %.2f ms  p99 %.2f ms  errors %d/%d  (%d conns, %.1fs)  cores: %s", label, res.RPS, strings.Fields(res.Unit)[0],
		res.P50ms, res.P99ms, res.Errors, res.Requests, res.Connections, res.DurationS, coresString(res.CPU))
	if res.Requests == 0 || float64(res.Errors) > 0.01*float64(res.Requests) {
		return res, fmt.Errorf("%s: %d of %d operations failed: %s", label, res.Errors, res.Requests, res.FirstError)
	}
	return res, nil
}

func coresString(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		if name, ok := strings.CutSuffix(k, "_cores"); ok {
			parts = append(parts, fmt.Sprintf("%s %.2f (%.3f ms/op)", name, v, m[name+"_cpu_ms_per_op"]))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func loadDetails(r loadResult) map[string]any {
	return map[string]any{"requests": r.Requests, "errors": r.Errors, "rps": r.RPS, "p50_ms": r.P50ms, "p90_ms": r.P90ms,
		"p99_ms": r.P99ms, "max_ms": r.MaxMs, "connections": r.Connections, "duration_s": r.DurationS, "status": r.Status, "cpu": r.CPU}
}

// ---------------------------------------------------------------- (6) memory

func (b *bench) scenarioMemory(ctx context.Context) error {
	if err := b.bulkSeed(ctx, b.opt.memUsers, b.opt.memTokens); err != nil {
		return err
	}
	// A few requests, so the process has served with the large tables in place.
	var served int
	for i := 0; i < 50 && i < len(b.bulkSample); i++ {
		if _, err := call(ctx, http.MethodGet, b.idURL+"/api/v0/user", b.bulkSample[rand.IntN(len(b.bulkSample))], nil, nil); err != nil {
			return err
		}
		served++
	}
	for i := 0; i < 20; i++ {
		u := b.seeded[i%len(b.seeded)]
		if _, err := call(ctx, http.MethodGet, b.idURL+"/api/v0/user/api-tokens", u.Session, nil, nil); err != nil {
			return err
		}
		served++
	}
	if _, err := call(ctx, http.MethodPatch, b.idURL+"/api/v0/user", b.seeded[0].APIToken, map[string]string{"name": "Memory Probe"}, nil); err != nil {
		return err
	}
	served++
	time.Sleep(2 * time.Second) // token-usage flush (1 s) included
	cur, peak, err := rss(b.identityd.pid())
	if err != nil {
		return err
	}
	mib := float64(cur) / 1024
	size := "REDUCED"
	if b.opt.full {
		size = "FULL"
	}
	b.add(row{ID: "6", Figure: f64(mib), Unit: "MiB VmRSS", Target: "≤ 256 MiB", Met: bptr(mib <= 256),
		Note: fmt.Sprintf("%s size: %d users + %d API tokens bulk-inserted into users_v1/api_tokens_v1, then %d requests; VmHWM %.0f MiB; RSS after all scenarios in run.identityd_rss_end_kib",
			size, b.opt.memUsers, b.opt.memTokens, served, float64(peak)/1024),
		Details: map[string]any{"vmrss_kib": cur, "vmhwm_kib": peak, "users": b.opt.memUsers, "tokens": b.opt.memTokens, "reduced": !b.opt.full, "requests": served}})
	logf("  identityd VmRSS %.1f MiB (peak %.1f MiB)", mib, float64(peak)/1024)
	return nil
}

// settleDB flushes dirty pages after bulk writes (CHECKPOINT needs superuser or
// pg_checkpoint; without it the run goes on), so a measurement does not pay for the seeding's
// background writes.
func (b *bench) settleDB(ctx context.Context) {
	if _, err := b.db.ExecContext(ctx, "CHECKPOINT"); err != nil {
		logf("  CHECKPOINT: %v (continuing)", err)
	}
}

// ---------------------------------------------------------------- (1) GET

func (b *bench) scenarioGet(ctx context.Context) error {
	toks := make([]string, 0, len(b.seeded)+len(b.bulkSample))
	for _, u := range b.seeded {
		toks = append(toks, u.APIToken)
	}
	toks = append(toks, b.bulkSample...)
	if len(toks) > b.opt.getTokens {
		toks = toks[:b.opt.getTokens]
	}
	rand.Shuffle(len(toks), func(i, j int) { toks[i], toks[j] = toks[j], toks[i] })
	file, err := b.writeTokens("tokens-get.txt", toks)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	gin, err := b.startProc("baseline-gin", b.binPath("baseline"), []string{"--mode", "gin", "--addr", addr}, identityEnv())
	if err != nil {
		return err
	}
	defer gin.stop()
	if _, err := waitHTTP(ctx, gin, "http://"+addr+"/healthz", 10*time.Millisecond, 20*time.Second); err != nil {
		return err
	}
	base, err := b.load(ctx, "1 baseline bare gin", "http://"+addr, "get-user", file, b.opt.getConns, gin)
	if err != nil {
		return err
	}
	if cur, _, err := rss(gin.pid()); err == nil {
		b.meta["baseline_gin_rss_kib"] = cur
	}
	gin.stop()
	// identityd answers a token it has seen from memory (its credential cache), the first use
	// from the database. One pass over every token first, so the measurement is the steady
	// state of a service whose callers reuse their tokens; the pass itself is the cold figure.
	cold, err := b.warmTokens(ctx, toks)
	if err != nil {
		return err
	}
	logf("  1 identityd, first use of each token (cache cold): %d requests in %.1fs (%.0f req/s, 32 clients)", len(toks), cold.Seconds(), float64(len(toks))/cold.Seconds())
	before := b.cacheStats(ctx)
	id, err := b.load(ctx, "1 identityd", b.idURL, "get-user", file, b.opt.getConns, b.identityd)
	if err != nil {
		return err
	}
	cache := map[string]any{}
	if after := b.cacheStats(ctx); before != nil && after != nil {
		for k, v := range after {
			n, ok := v.(float64)
			b0, ok0 := before[k].(float64)
			if ok && ok0 && k != "Entries" {
				cache[k] = n - b0
			}
		}
		logf("  1 identityd credential cache during the run: %v", cache)
	}
	note := fmt.Sprintf("%d conns, %s; %d distinct tokens (%d users via API, rest bulk-seeded) cycled, each used once before (cold pass: %.0f req/s)",
		b.opt.getConns, b.opt.duration, len(toks), len(b.seeded), float64(len(toks))/cold.Seconds())
	b.add(ratioRow(row{ID: "1", Figure: f64(id.RPS), Unit: "req/s", Baseline: "bare gin, same JSON", BaselineValue: f64(base.RPS),
		Target: "≥ 0.5×", Note: note, Details: map[string]any{"identityd": loadDetails(id), "baseline": loadDetails(base), "tokens": len(toks),
			"cold_pass_s": cold.Seconds(), "cold_pass_rps": float64(len(toks)) / cold.Seconds(), "cache": cache}}, 0.5, false))
	b.add(ratioRow(row{ID: "1p99", Figure: f64(id.P99ms), Unit: "ms p99", Baseline: "bare gin p99", BaselineValue: f64(base.P99ms),
		Target: "≤ 2.0×", Details: map[string]any{"identityd_p50_ms": id.P50ms, "baseline_p50_ms": base.P50ms}}, 2.0, true))
	return nil
}

// cacheStats reads identityd's credential cache counters from its debug listener (--debug-addr);
// nil without one.
func (b *bench) cacheStats(ctx context.Context) map[string]any {
	if b.opt.debugAddr == "" {
		return nil
	}
	var out map[string]any
	if _, err := call(ctx, http.MethodGet, "http://"+b.opt.debugAddr+"/debug/identityd/cache", "", nil, &out); err != nil {
		logf("  cache counters: %v", err)
		return nil
	}
	return out
}

// warmTokens authenticates once with every token (32 clients) and returns how long it took.
func (b *bench) warmTokens(ctx context.Context, toks []string) (time.Duration, error) {
	start := time.Now()
	next := make(chan string)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tok := range next {
				if _, err := call(ctx, http.MethodGet, b.idURL+"/api/v0/user", tok, nil, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, tok := range toks {
		select {
		case next <- tok:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	for e := range errs {
		err = cmp.Or(err, e)
	}
	return time.Since(start), err
}

// ---------------------------------------------------------------- CRUD baseline server

// crudURL starts (once) the CRUD baseline on copies of the read-model tables.
func (b *bench) crudURL(ctx context.Context) (string, error) {
	if v, ok := b.meta["crud_url"].(string); ok {
		return v, nil
	}
	for _, q := range []string{
		"DROP TABLE IF EXISTS bench_crud_tokens, bench_crud_users",
		"CREATE TABLE bench_crud_users (LIKE users_v1 INCLUDING ALL)",
		"CREATE TABLE bench_crud_tokens (LIKE api_tokens_v1 INCLUDING ALL)",
		"INSERT INTO bench_crud_users SELECT * FROM users_v1",
		"INSERT INTO bench_crud_tokens SELECT * FROM api_tokens_v1",
		"VACUUM ANALYZE bench_crud_users", "VACUUM ANALYZE bench_crud_tokens",
	} {
		if _, err := b.db.ExecContext(ctx, q); err != nil {
			return "", fmt.Errorf("%s: %w", q, err)
		}
	}
	b.settleDB(ctx)
	port, err := freePort()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := b.startProc("baseline-crud", b.binPath("baseline"), []string{"--mode", "crud", "--addr", addr, "--database-url", b.dsn}, identityEnv())
	if err != nil {
		return "", err
	}
	if _, err := waitHTTP(ctx, p, "http://"+addr+"/healthz", 10*time.Millisecond, 20*time.Second); err != nil {
		return "", err
	}
	b.crud = p
	b.meta["crud_url"] = "http://" + addr
	b.meta["crud_baseline"] = "bench/cmd/baseline --mode crud: gin + bun/pgdriver (pool 16) on copies of users_v1/api_tokens_v1 in the same database; one SQL statement per request"
	return "http://" + addr, nil
}

// ---------------------------------------------------------------- (2) PATCH

func (b *bench) scenarioPatch(ctx context.Context) error {
	n := b.opt.writeConns
	rawRate, rawP99, err := b.jsAppendRate(ctx, n)
	if err != nil {
		return fmt.Errorf("baseline (a): %w", err)
	}
	b.rawAppendRate = rawRate
	crud, err := b.crudURL(ctx)
	if err != nil {
		return err
	}
	toks := make([]string, n)
	for i := range toks {
		toks[i] = b.seeded[i].APIToken
	}
	file, err := b.writeTokens("tokens-patch.txt", toks)
	if err != nil {
		return err
	}
	base, err := b.load(ctx, "2 baseline CRUD UPDATE", crud, "patch-user", file, n, b.crud)
	if err != nil {
		return err
	}
	id, err := b.load(ctx, "2 identityd", b.idURL, "patch-user", file, n, b.identityd)
	if err != nil {
		return err
	}
	b.add(ratioRow(row{ID: "2a", Figure: f64(id.RPS), Unit: "req/s", Baseline: "(a) 32 goroutines JS append", BaselineValue: f64(rawRate),
		Target: "≥ 0.3×", Note: fmt.Sprintf("%d conns on %d distinct users, %s; identityd p50 %.1f ms p99 %.1f ms; raw append p99 %.1f ms", n, n, b.opt.duration, id.P50ms, id.P99ms, rawP99),
		Details: map[string]any{"identityd": loadDetails(id), "baseline_a_msgs_per_s": rawRate, "baseline_a_p99_ms": rawP99}}, 0.3, false))
	// The ceiling of any write path that appends to the stream first: durable appends alone,
	// against the CRUD baseline. Below 1.0, target (b) is out of reach on these servers.
	ceiling := rawRate / base.RPS
	note := fmt.Sprintf("CRUD p50 %.1f ms p99 %.1f ms; ceiling: raw appends alone are %.2f× CRUD", base.P50ms, base.P99ms, ceiling)
	if ceiling < 1 {
		note += " (JetStream syncs each append, PostgreSQL commits concurrent transactions with one WAL flush)"
	}
	b.add(ratioRow(row{ID: "2b", Figure: f64(id.RPS), Unit: "req/s", Baseline: "(b) CRUD: one bun UPDATE", BaselineValue: f64(base.RPS),
		Target: "≥ 1.0×", Note: note,
		Details: map[string]any{"identityd": loadDetails(id), "baseline": loadDetails(base), "ceiling_raw_appends_over_crud": ceiling}}, 1.0, false))
	return nil
}

// jsAppendRate is baseline (a): `workers` goroutines on one connection, each appending to its
// own aggregate subject with an expected last subject sequence over the aggregate's wildcard
// (the headers identityd sends), file storage with the run's sync_interval (--nats-sync), for --duration.
func (b *bench) jsAppendRate(ctx context.Context, workers int) (rate, p99 float64, err error) {
	js, err := jetstream.New(b.nc)
	if err != nil {
		return 0, 0, err
	}
	const stream = "BENCH_APPEND"
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{"benchappend.>"},
		Storage: jetstream.FileStorage, Replicas: b.opt.natsNodes, Duplicates: 2 * time.Minute}); err != nil {
		return 0, 0, err
	}
	defer func() { _ = js.DeleteStream(context.Background(), stream) }()
	if err := waitStreamLeader(ctx, js, stream); err != nil {
		return 0, 0, err
	}
	var measuring, stop atomic.Bool
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	meta := events.Metadata{Actor: "system", RequestID: "bench-append"}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			user := uuid.New()
			filter := "benchappend.user." + user.String() + ".*"
			var last uint64
			chain, name := "", "A"
			for i := 0; !stop.Load(); i++ {
				next := "Name " + strconv.Itoa(i)
				m, c, err := events.Encode(b.signer, uuid.NewString(), time.Now().UTC(), meta, chain, events.Renamed(user, name, next))
				if err != nil {
					errs[w] = err
					return
				}
				m.Subject = "benchappend.user." + user.String() + ".renamed"
				m.Header.Set(jetstream.MsgIDHeader, uuid.NewString())
				m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
				m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, filter)
				measured := measuring.Load()
				t0 := time.Now()
				ack, err := js.PublishMsg(ctx, m)
				d := time.Since(t0)
				if err != nil {
					errs[w] = err
					return
				}
				last, chain, name = ack.Sequence, c, next
				if measured && measuring.Load() {
					lat[w] = append(lat[w], d)
				}
			}
		}(w)
	}
	time.Sleep(b.opt.warmup)
	measuring.Store(true)
	t0 := time.Now()
	select {
	case <-time.After(b.opt.duration):
	case <-ctx.Done():
	}
	measuring.Store(false)
	elapsed := time.Since(t0)
	stop.Store(true)
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return 0, 0, e
		}
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return 0, 0, fmt.Errorf("no appends measured")
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	rate = float64(len(all)) / elapsed.Seconds()
	p99 = float64(all[min(len(all)-1, len(all)*99/100)].Microseconds()) / 1000
	logf("  %-28s %9.0f msg/s  p99 %.2f ms  (%d goroutines, %.1fs)", "2 baseline (a) JS append", rate, p99, workers, elapsed.Seconds())
	return rate, p99, nil
}

// waitStreamLeader returns once the stream has a leader (at once on one server).
func waitStreamLeader(ctx context.Context, js jetstream.JetStream, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := js.Stream(ctx, name)
		if err == nil {
			if info := st.CachedInfo(); info.Cluster == nil || info.Cluster.Leader != "" {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("stream %s has no leader: %w", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- (3) create token + use

func (b *bench) scenarioTokens(ctx context.Context) error {
	n := b.opt.writeConns
	crud, err := b.crudURL(ctx)
	if err != nil {
		return err
	}
	toks := make([]string, n)
	for i := range toks {
		toks[i] = b.seeded[n+i].APIToken // other users than scenario 2's
	}
	file, err := b.writeTokens("tokens-create.txt", toks)
	if err != nil {
		return err
	}
	base, err := b.load(ctx, "3 baseline CRUD INSERT", crud, "create-token-use", file, n, b.crud)
	if err != nil {
		return err
	}
	id, err := b.load(ctx, "3 identityd", b.idURL, "create-token-use", file, n, b.identityd)
	if err != nil {
		return err
	}
	note := fmt.Sprintf("%d conns on %d distinct users; pair p50/p99 identityd %.1f/%.1f ms, CRUD %.1f/%.1f ms", n, n, id.P50ms, id.P99ms, base.P50ms, base.P99ms)
	details := map[string]any{"identityd": loadDetails(id), "baseline": loadDetails(base)}
	if b.rawAppendRate > 0 { // each pair is one append: scenario 2's raw append rate is the ceiling
		note += fmt.Sprintf("; ceiling: raw appends alone (scenario 2) are %.2f× CRUD pairs", b.rawAppendRate/base.RPS)
		details["ceiling_raw_appends_over_crud"] = b.rawAppendRate / base.RPS
	}
	b.add(ratioRow(row{ID: "3", Figure: f64(id.RPS), Unit: "pairs/s (POST+GET)", Baseline: "(b) CRUD INSERT + SELECT", BaselineValue: f64(base.RPS),
		Target: "≥ 1.0×", Note: note, Details: details}, 1.0, false))
	return nil
}

// ---------------------------------------------------------------- (5) projection lag

// scenarioLag appends events (new users: registered, renamed, token created) straight to the
// IDENTITY stream at a steady rate for --duration, and polls the projection checkpoint (committed
// in the same transaction as the rows) every millisecond. Lag = first poll that shows the event's
// sequence committed − the event's PubAck.
func (b *bench) scenarioLag(ctx context.Context) error {
	rate := b.opt.lagRate
	total := int(float64(rate) * b.opt.duration.Seconds())
	interval := time.Second / time.Duration(rate)
	type ev struct {
		msg       *nats.Msg
		acked     time.Time
		sent      time.Time
		seq       uint64
		published bool
	}
	evs := make([]ev, total)
	at := time.Now().UTC()
	meta := events.Metadata{Actor: "system", RequestID: "bench-lag"}
	for i := 0; i < total; i += 3 {
		id := newID()
		chain := ""
		for k, e := range []events.Event{
			events.UserRegistered{UserID: id, Email: fmt.Sprintf("lag%d-%s@example.com", i, b.runID), Name: "Lag", PersonalOrgSlug: fmt.Sprintf("lag-%d-%s", i, b.runID), RegisteredAt: at},
			events.Renamed(id, "Lag", "Lag Renamed"),
			events.TokenCreated{UserID: id, TokenID: newID(), Description: "lag", Digest: uuid.NewString() + uuid.NewString(), CreatedAt: at},
		} {
			if i+k >= total {
				break
			}
			m, c, err := events.Encode(b.signer, newID().String(), at, meta, chain, e)
			if err != nil {
				return err
			}
			chain = c
			evs[i+k].msg = m
		}
	}

	// Poller: position over time.
	type sample struct {
		pos uint64
		at  time.Time
	}
	var samples []sample
	stopPoll := make(chan struct{})
	pollDone := make(chan error, 1)
	conn, err := b.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() {
		for {
			select {
			case <-stopPoll:
				pollDone <- nil
				return
			default:
			}
			var pos uint64
			if err := conn.QueryRowContext(ctx, "SELECT position FROM projection_checkpoints WHERE name = 'users_v1'").Scan(&pos); err != nil {
				pollDone <- err
				return
			}
			samples = append(samples, sample{pos, time.Now()})
			time.Sleep(time.Millisecond)
		}
	}()

	// Publishers: a steady schedule served by 64 synchronous publishers (like 64 concurrent
	// requests of identityd, each waiting for its PubAck). An open-loop async publisher was
	// tried too: with sync_interval always it saturates the stream and starves the consumer.
	js, err := jetstream.New(b.nc)
	if err != nil {
		return err
	}
	jobs := make(chan int, total)
	var wg sync.WaitGroup
	var pubErr atomic.Value
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				e := &evs[i]
				e.sent = time.Now()
				ack, err := js.PublishMsg(ctx, e.msg)
				if err != nil {
					pubErr.Store(err)
					continue
				}
				e.acked, e.seq, e.published = time.Now(), ack.Sequence, true
			}
		}()
	}
	snap := b.cpuNow(b.identityd)
	wal0, walErr := b.walStats(ctx)
	start := time.Now()
	for i := 0; i < total && ctx.Err() == nil; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	pubElapsed := time.Since(start)
	achieved := float64(total) / pubElapsed.Seconds()
	cpu := b.cpuSince(snap, b.identityd, achieved)
	var maxSeq uint64
	for _, e := range evs {
		maxSeq = max(maxSeq, e.seq)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		pos, err := b.checkpoint(ctx)
		if err != nil {
			close(stopPoll)
			if perr := <-pollDone; perr != nil {
				return errors.Join(err, perr)
			}
			return err
		}
		if pos >= maxSeq || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond)
	close(stopPoll)
	if err := <-pollDone; err != nil {
		return err
	}
	if v := pubErr.Load(); v != nil {
		return fmt.Errorf("append: %v", v)
	}
	var lags, lagsSent []time.Duration
	missing := 0
	for _, e := range evs {
		if !e.published {
			missing++
			continue
		}
		k := sort.Search(len(samples), func(j int) bool { return samples[j].pos >= e.seq })
		if k == len(samples) {
			missing++
			continue
		}
		lags = append(lags, max(0, samples[k].at.Sub(e.acked)))
		lagsSent = append(lagsSent, max(0, samples[k].at.Sub(e.sent)))
	}
	if len(lags) == 0 {
		return fmt.Errorf("no event became visible")
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	sort.Slice(lagsSent, func(i, j int) bool { return lagsSent[i] < lagsSent[j] })
	pct := func(d []time.Duration, p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
	}
	p50, p99, mx := pct(lags, 0.5), pct(lags, 0.99), float64(lags[len(lags)-1].Microseconds())/1000
	// Commit cadence of the projector, seen through the checkpoint while events were flowing.
	var advances int
	var firstPos, lastPos uint64
	for j := 1; j < len(samples); j++ {
		if samples[j].pos > samples[j-1].pos && samples[j].at.Before(start.Add(pubElapsed)) && samples[j].at.After(start) {
			if advances == 0 {
				firstPos = samples[j-1].pos
			}
			advances++
			lastPos = samples[j].pos
		}
	}
	perCommit, commitEvery := 0.0, 0.0
	if advances > 0 {
		perCommit = float64(lastPos-firstPos) / float64(advances)
		commitEvery = pubElapsed.Seconds() * 1000 / float64(advances)
	}
	logf("  projector: %d checkpoint advances seen, ~%.0f events per commit, one every ~%.1f ms; cores: %s", advances, perCommit, commitEvery, coresString(cpu))
	wal := map[string]float64{}
	if wal1, err := b.walStats(ctx); err == nil && walErr == nil && total > 0 {
		// The whole server's WAL while the events were appended and projected (the poller's
		// reads write none): how much each event cost PostgreSQL's log.
		wal["bytes_per_event"] = (wal1[2] - wal0[2]) / float64(total)
		wal["full_page_images_per_event"] = (wal1[1] - wal0[1]) / float64(total)
		wal["records_per_event"] = (wal1[0] - wal0[0]) / float64(total)
		logf("  PostgreSQL WAL per event: %.0f bytes, %.2f full-page images, %.1f records", wal["bytes_per_event"], wal["full_page_images_per_event"], wal["records_per_event"])
	}
	logf("  projection lag at %.0f events/s: p50 %.1f ms p99 %.1f ms max %.1f ms (%d samples, %d not visible)", achieved, p50, p99, mx, len(samples), missing)
	r := row{ID: "5", Figure: f64(p99), Unit: "ms p99 lag", Target: "≤ 50 ms", Met: bptr(p99 <= 50 && missing == 0 && achieved >= 0.95*float64(rate)),
		Note: fmt.Sprintf("%d events at %.0f/s over %s (register/rename/token of new users, appended directly); p50 %.1f ms, max %.1f ms; checkpoint polled every ~1 ms (%d polls)",
			total, achieved, b.opt.duration, p50, mx, len(samples)),
		Details: map[string]any{"events": total, "achieved_rate": achieved, "p50_ms": p50, "p99_ms": p99, "max_ms": mx,
			"p99_from_send_ms": pct(lagsSent, 0.99), "not_visible": missing, "polls": len(samples),
			"checkpoint_advances": advances, "events_per_commit": perCommit, "ms_between_commits": commitEvery, "cpu": cpu, "wal": wal}}
	if achieved < 0.95*float64(rate) {
		r.Note += fmt.Sprintf("; TARGET RATE NOT REACHED: %d events/s asked, NATS (sync_interval %s) acknowledged %.0f/s", rate, b.opt.natsSync, achieved)
	}
	if missing > 0 {
		r.Note += fmt.Sprintf("; %d events not visible within 60 s", missing)
	}
	b.add(r)
	return nil
}

// walStats is PostgreSQL's WAL counters (pg_stat_wal): records, full-page images, bytes.
func (b *bench) walStats(ctx context.Context) ([3]float64, error) {
	var v [3]float64
	err := b.db.QueryRowContext(ctx, "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").Scan(&v[0], &v[1], &v[2])
	return v, err
}

// ---------------------------------------------------------------- (4) rebuild

func (b *bench) scenarioRebuild(ctx context.Context) error {
	target := uint64(b.opt.rebuildEvents)
	last, err := b.lastSeq(ctx)
	if err != nil {
		return err
	}
	if last < target {
		need := int(target - last)
		logf("  appending %d events (JetStream async publish) so the stream holds %d", need, target)
		t0 := time.Now()
		if err := b.seedEvents(ctx, need); err != nil {
			return err
		}
		d := time.Since(t0)
		b.meta["rebuild_seed"] = map[string]any{"events": need, "seconds": d.Seconds(), "events_per_s": float64(need) / d.Seconds()}
		logf("  appended %d events in %.1fs (%.0f/s)", need, d.Seconds(), float64(need)/d.Seconds())
	}
	if last, err = b.lastSeq(ctx); err != nil {
		return err
	}
	// Let the live projector catch up first (its rate is reported as a by-product), so the
	// rebuild does not compete with it.
	t0 := time.Now()
	pos0, _ := b.checkpoint(ctx)
	for {
		pos, err := b.checkpoint(ctx)
		if err != nil {
			return err
		}
		if pos >= last {
			break
		}
		if time.Since(t0) > 60*time.Minute {
			return fmt.Errorf("live projector stuck at %d of %d", pos, last)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if d := time.Since(t0); last > pos0 {
		rate := float64(last-pos0) / d.Seconds()
		b.meta["live_projector_catch_up"] = map[string]any{"events": last - pos0, "seconds": d.Seconds(), "events_per_s": rate}
		logf("  live projector caught up %d events in %.1fs (%.0f events/s)", last-pos0, d.Seconds(), rate)
	}

	logf("  identityctl projections rebuild over %d events", last)
	t1 := time.Now()
	out, err := b.runCmd(ctx, "identityctl-rebuild", b.binPath("identityctl"), []string{"projections", "rebuild"},
		identityEnv("IDENTITYD_NATS_URL="+b.natsURL, "IDENTITYD_NATS_REPLICAS="+strconv.Itoa(b.opt.natsNodes), "IDENTITYD_DATABASE_URL="+b.dsn, "IDENTITYD_DATA_DIR="+filepath.Join(b.tmp, "identityctl-data"), "IDENTITYD_EVENT_PUBLIC_KEYS="+b.signer.PublicKey().String(), "IDENTITYD_SECRET_KEY="+b.secretKey))
	wall := time.Since(t1)
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var res struct {
		Events     uint64           `json:"events"`
		DurationMS int64            `json:"duration_ms"`
		Rate       float64          `json:"events_per_second"`
		PhasesMS   map[string]int64 `json:"phases_ms"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		return fmt.Errorf("identityctl output %q: %w", out, err)
	}
	rate := float64(res.Events) / wall.Seconds() // process wall time: start-up, connect, replay, switch-over
	logf("  rebuild: %d events in %.1fs wall (%d ms inside: %.0f events/s; phases in ms: %v)", res.Events, wall.Seconds(), res.DurationMS, res.Rate, res.PhasesMS)

	rows, d, err := b.bulkInsertBaseline(ctx, int(res.Events))
	if err != nil {
		return fmt.Errorf("bulk insert baseline: %w", err)
	}
	baseRate := float64(rows) / d.Seconds()
	logf("  baseline bun bulk insert: %d rows in %.1fs (%.0f rows/s)", rows, d.Seconds(), baseRate)
	size := "REDUCED"
	if b.opt.full {
		size = "FULL"
	}
	b.add(ratioRow(row{ID: "4", Figure: f64(rate), Unit: "events/s", Baseline: "bun bulk insert, same rows", BaselineValue: f64(baseRate),
		Target: "≥ 0.5×", Note: fmt.Sprintf("%s size: %d events; rebuild %.1f s wall (identityctl process), %.1f s inside; bulk insert %.1f s (1,000 rows/INSERT, users_v1 shape + PK, 1 writer)",
			size, res.Events, wall.Seconds(), float64(res.DurationMS)/1000, d.Seconds()),
		Details: map[string]any{"events": res.Events, "wall_s": wall.Seconds(), "inside_ms": res.DurationMS, "inside_events_per_s": res.Rate, "phases_ms": res.PhasesMS,
			"baseline_rows": rows, "baseline_s": d.Seconds(), "reduced": !b.opt.full}}, 0.5, false))
	return nil
}

// bulkInsertBaseline inserts n user-shaped rows into a scratch table with bun, 1,000 rows per
// statement (each its own transaction), one writer — the shape of a rebuild's work without the
// event decoding and folding.
func (b *bench) bulkInsertBaseline(ctx context.Context, n int) (int, time.Duration, error) {
	if _, err := b.db.ExecContext(ctx, "DROP TABLE IF EXISTS bench_bulk; CREATE TABLE bench_bulk (LIKE users_v1 INCLUDING DEFAULTS INCLUDING CONSTRAINTS); ALTER TABLE bench_bulk ADD PRIMARY KEY (id)"); err != nil {
		return 0, 0, err
	}
	defer func() { _, _ = b.db.ExecContext(context.Background(), "DROP TABLE IF EXISTS bench_bulk") }()
	now := time.Now().UTC()
	start := time.Now()
	for from := 0; from < n; from += 1000 {
		rows := make([]projections.UserRow, 0, 1000) // the users table's row model, into the scratch table
		for i := from; i < min(from+1000, n); i++ {
			rows = append(rows, projections.UserRow{ID: uuid.New(), Email: "bulk" + strconv.Itoa(i) + "@example.com", Name: "Bulk User",
				PersonalOrgSlug: "bulk-user-" + strconv.Itoa(i), CreatedAt: now, UpdatedAt: now, Version: uint64(i)})
		}
		if _, err := b.db.NewInsert().Model(&rows).ModelTableExpr("bench_bulk").Exec(ctx); err != nil {
			return 0, 0, err
		}
	}
	return n, time.Since(start), nil
}

// ---------------------------------------------------------------- (7) cold start

func (b *bench) scenarioColdStart(ctx context.Context) error {
	const runs = 3
	measure := func(name string, bin string, args []string, env func(addr string, i int) []string, path string) ([]float64, error) {
		var out []float64
		for i := 0; i < runs; i++ {
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			addr := "127.0.0.1:" + strconv.Itoa(port)
			a := append([]string(nil), args...)
			if name == "baseline" {
				a = append(a, "--addr", addr)
			}
			t0 := time.Now()
			p, err := b.startProc(fmt.Sprintf("cold-%s-%d", name, i), bin, a, env(addr, i))
			if err != nil {
				return nil, err
			}
			t1, err := waitHTTP(ctx, p, "http://"+addr+path, 2*time.Millisecond, 30*time.Second)
			p.stop()
			if err != nil {
				return nil, err
			}
			out = append(out, float64(t1.Sub(t0).Microseconds())/1000)
		}
		sort.Float64s(out)
		return out, nil
	}
	id, err := measure("identityd", b.binPath("identityd"), nil, func(addr string, i int) []string {
		np, _ := freePort()
		// Embedded defaults: no NATS URL, no database URL, no secret key. Only the listen
		// addresses (free ports, so the run cannot collide) and a fresh data dir are set.
		return identityEnv("IDENTITYD_HTTP_ADDR="+addr, "IDENTITYD_NATS_LISTEN=127.0.0.1:"+strconv.Itoa(np),
			"IDENTITYD_DATA_DIR="+filepath.Join(b.tmp, fmt.Sprintf("cold-data-%d", i)))
	}, "/readyz")
	if err != nil {
		return err
	}
	gin, err := measure("baseline", b.binPath("baseline"), []string{"--mode", "gin"}, func(string, int) []string { return identityEnv() }, "/healthz")
	if err != nil {
		return err
	}
	med, gmed := id[len(id)/2], gin[len(gin)/2]
	logf("  cold start identityd %v ms, bare gin %v ms", id, gin)
	b.add(row{ID: "7", Figure: f64(med), Unit: "ms to first 200", Baseline: "bare gin process start", BaselineValue: f64(gmed),
		Ratio: f64(med / gmed), Target: "≤ 1000 ms", Met: bptr(med <= 1000),
		Note:    fmt.Sprintf("median of %d; exec → first 200 on GET /readyz (NATS + SQLite pinged), fresh data dir, embedded NATS + SQLite; runs %v ms", runs, id),
		Details: map[string]any{"identityd_ms": id, "baseline_ms": gin}})
	return nil
}
