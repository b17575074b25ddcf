package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections"
)

// identityd's argon2id cost during the benchmark: low, so seeding sign-ups is cheap. No
// scenario measures password hashing.
const (
	argonMemKiB = 64
	argonTime   = 1
)

func (b *bench) startDeployment(ctx context.Context) error {
	if err := b.startPostgres(ctx); err != nil {
		return err
	}
	if err := b.startNATS(ctx); err != nil {
		return err
	}
	return b.startIdentityd(ctx)
}

// startPostgres creates a fresh database on the server of IDENTITYD_TEST_DATABASE_URL, or the
// local default, or whatever deploy/test-postgres.sh provides; it is dropped at the end.
func (b *bench) startPostgres(ctx context.Context) error {
	candidates := []string{}
	if v := os.Getenv("IDENTITYD_TEST_DATABASE_URL"); v != "" {
		candidates = append(candidates, v)
	}
	candidates = append(candidates, "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	var admin *bun.DB
	var lastErr error
	for _, dsn := range candidates {
		db, err := projections.OpenDB(ctx, projections.DBConfig{URL: dsn, MaxOpenConns: 2})
		if err == nil {
			admin, b.pgAdminDSN = db, dsn
			break
		}
		lastErr = err
	}
	if admin == nil {
		logf("no PostgreSQL answered (%v); running deploy/test-postgres.sh", lastErr)
		out, err := b.runCmd(ctx, "test-postgres", "bash", []string{"deploy/test-postgres.sh"}, nil)
		if err != nil {
			return err
		}
		dsn := strings.TrimSpace(string(out))
		if admin, err = projections.OpenDB(ctx, projections.DBConfig{URL: dsn, MaxOpenConns: 2}); err != nil {
			return err
		}
		b.pgAdminDSN = dsn
	}
	b.dbName = "identityd_bench_" + b.runID
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+b.dbName); err != nil {
		_ = admin.Close()
		return fmt.Errorf("create database: %w", err)
	}
	b.addCleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if b.db != nil {
			_ = b.db.Close()
		}
		if _, err := admin.ExecContext(cctx, "DROP DATABASE IF EXISTS "+b.dbName+" WITH (FORCE)"); err != nil {
			logf("drop database %s: %v", b.dbName, err)
		}
		_ = admin.Close()
	})
	u, err := url.Parse(b.pgAdminDSN)
	if err != nil {
		return err
	}
	u.Path = "/" + b.dbName
	b.dsn = u.String()
	// Bulk seeding and copying millions of rows: answers may take minutes.
	if b.db, err = projections.OpenDB(ctx, projections.DBConfig{URL: b.dsn, MaxOpenConns: 8, ReadTimeout: 30 * time.Minute}); err != nil {
		return err
	}
	b.pgSettings = map[string]string{"database": b.dbName, "server": u.Host}
	var version string
	_ = b.db.QueryRowContext(ctx, "SHOW server_version").Scan(&version)
	b.pgSettings["version"] = version
	for _, s := range []string{"fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "shared_buffers"} {
		var v string
		if err := b.db.QueryRowContext(ctx, "SHOW "+s).Scan(&v); err == nil {
			b.pgSettings[s] = v
		}
	}
	logf("PostgreSQL %s at %s: database %s (fsync=%s, synchronous_commit=%s)", version, u.Host, b.dbName, b.pgSettings["fsync"], b.pgSettings["synchronous_commit"])
	return nil
}

// startNATS runs the pinned nats-server as processes: JetStream, file storage, fsync always.
// With --nats-nodes 3 it is a three-node cluster on loopback and every stream of the run
// (identityd's, baseline (a)'s) has three replicas.
func (b *bench) startNATS(ctx context.Context) error {
	n := b.opt.natsNodes
	ports := make([]int, 2*n)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	var routes []string
	for i := 0; i < n; i++ {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i]))
	}
	var urls []string
	for i := 0; i < n; i++ {
		name := "nats-server"
		if n > 1 {
			name = fmt.Sprintf("nats-server-%d", i+1)
		}
		store := filepath.Join(b.tmp, name+"-store")
		conf := filepath.Join(b.tmp, name+".conf")
		cfg := fmt.Sprintf("server_name: identityd-bench-%d\nlisten: 127.0.0.1:%d\nmax_payload: 1048576\n"+
			"jetstream {\n  store_dir: %q\n%s}\n", i+1, ports[i], store, b.syncSetting())
		if n > 1 {
			cfg += fmt.Sprintf("cluster {\n  name: identityd-bench\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n", ports[n+i], strings.Join(routes, ", "))
		}
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			return err
		}
		p, err := b.startProc(name, b.binPath("nats-server"), []string{"-c", conf}, os.Environ())
		if err != nil {
			return err
		}
		b.natsProcs = append(b.natsProcs, p)
		addr := "127.0.0.1:" + strconv.Itoa(ports[i])
		urls = append(urls, "nats://"+addr)
	}
	for i, p := range b.natsProcs {
		if err := waitTCP(ctx, p, strings.TrimPrefix(urls[i], "nats://"), 20*time.Second); err != nil {
			return err
		}
	}
	b.natsURL = strings.Join(urls, ",")
	var err error
	if b.nc, err = nats.Connect(b.natsURL, nats.Name("identityd-bench")); err != nil {
		return err
	}
	b.addCleanup(func() { b.nc.Close() })
	if err := waitJetStream(ctx, b.nc, 60*time.Second); err != nil {
		return err
	}
	logf("nats-server %s: %s (JetStream, file storage in the temp dir, sync_interval: %s, %d replica(s))", b.nc.ConnectedServerVersion(), b.natsURL, b.syncDescription(), n)
	return nil
}

// waitJetStream returns once JetStream answers account info: at once on one server, after
// the meta leader is elected on a cluster.
func waitJetStream(ctx context.Context, nc *nats.Conn, timeout time.Duration) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("JetStream not ready: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// identityEnv is the environment without any IDENTITYD_* variable of the caller, plus kv.
func identityEnv(kv ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "IDENTITYD_") {
			env = append(env, e)
		}
	}
	return append(env, kv...)
}

func (b *bench) identitydEnv(extra ...string) []string {
	return identityEnv(append([]string{
		"IDENTITYD_NATS_URL=" + b.natsURL,
		"IDENTITYD_NATS_REPLICAS=" + strconv.Itoa(b.opt.natsNodes),
		"IDENTITYD_DATABASE_URL=" + b.dsn,
		"IDENTITYD_SECRET_KEY=" + b.secretKey,
		"IDENTITYD_ARGON2_MEMORY_KIB=" + strconv.Itoa(argonMemKiB),
		"IDENTITYD_ARGON2_TIME=" + strconv.Itoa(argonTime),
		"IDENTITYD_LOG_LEVEL=warn",
		"IDENTITYD_DEBUG_ADDR=" + b.opt.debugAddr,
	}, extra...)...)
}

// startIdentityd runs identityd on the external NATS and PostgreSQL.
func (b *bench) startIdentityd(ctx context.Context) error {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	b.secretKey = hex.EncodeToString(key)
	var err error
	// The events the bench appends itself are signed and MACed exactly as identityd's own are.
	if b.signer, err = events.DeriveSigningKey(key); err != nil {
		return err
	}
	mac, err := events.DeriveMACKey(key)
	if err != nil {
		return err
	}
	b.signer = b.signer.WithMAC(mac)
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	b.idURL = "http://" + addr
	b.identityd, err = b.startProc("identityd", b.binPath("identityd"), nil, b.identitydEnv(
		"IDENTITYD_HTTP_ADDR="+addr, "IDENTITYD_DATA_DIR="+filepath.Join(b.tmp, "identityd-data")))
	if err != nil {
		return err
	}
	if _, err := waitHTTP(ctx, b.identityd, b.idURL+"/readyz", 20*time.Millisecond, 60*time.Second); err != nil {
		return err
	}
	logf("identityd at %s (pid %d, log %s)", b.idURL, b.identityd.pid(), b.identityd.logPath)
	return nil
}

// syncSetting is the jetstream block's sync_interval line for --nats-sync.
func (b *bench) syncSetting() string {
	if b.opt.natsSync == "always" {
		return "  sync_interval: always\n"
	}
	return "" // NATS's default: a sync every 2 minutes
}

// syncDescription states --nats-sync in the output.
func (b *bench) syncDescription() string {
	if b.opt.natsSync == "always" {
		return "always (fsync before every ack)"
	}
	return "NATS default, a sync every 2 min (NOT DURABLE: acknowledged appends can be lost on power loss)"
}
