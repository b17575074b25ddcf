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
	"github.com/uptrace/bun"

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

// startNATS runs the pinned nats-server as a process: JetStream, file storage, fsync always.
func (b *bench) startNATS(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	store := filepath.Join(b.tmp, "nats-store")
	conf := filepath.Join(b.tmp, "nats.conf")
	cfg := fmt.Sprintf("server_name: identityd-bench\nlisten: 127.0.0.1:%d\nmax_payload: 1048576\n"+
		"jetstream {\n  store_dir: %q\n  sync_interval: always\n}\n", port, store)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return err
	}
	b.nats, err = b.startProc("nats-server", b.binPath("nats-server"), []string{"-c", conf}, os.Environ())
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitTCP(ctx, b.nats, addr, 20*time.Second); err != nil {
		return err
	}
	b.natsURL = "nats://" + addr
	if b.nc, err = nats.Connect(b.natsURL, nats.Name("identityd-bench")); err != nil {
		return err
	}
	b.addCleanup(func() { b.nc.Close() })
	logf("nats-server %s at %s (JetStream, file storage in %s, sync_interval: always)", b.nc.ConnectedServerVersion(), b.natsURL, store)
	return nil
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
