// Package sqldb opens identityd's read-model database: PostgreSQL (pgdriver) or SQLite
// (modernc.org/sqlite, no cgo), through bun, with the pool, timeouts and file permissions the
// service relies on. It knows nothing of the tables; the projections do.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/driver/pgdriver"
	_ "modernc.org/sqlite" // pure-Go SQLite driver ("sqlite"), no cgo
)

// DBConfig selects and tunes the read-model database.
type DBConfig struct {
	// URL is a postgres:// or postgresql:// URL, or sqlite:PATH / file:PATH for SQLite.
	URL string
	// MaxOpenConns bounds the connection pool (default 16 for PostgreSQL, 8 for SQLite).
	MaxOpenConns int
	// ReadTimeout bounds the wait for one answer of PostgreSQL (default 10s): long enough for
	// any query the service makes, short enough that a dead server fails requests clearly.
	// Tools doing bulk work raise it.
	ReadTimeout time.Duration
}

// Validate reports a configuration that cannot work.
func (c DBConfig) Validate() error {
	if c.URL == "" {
		return errors.New("projections: database URL is required")
	}
	if !isPostgres(c.URL) && !isSQLite(c.URL) {
		return fmt.Errorf("projections: unsupported database URL %q (want postgres://… or sqlite:PATH)", redact(c.URL))
	}
	return nil
}

func isPostgres(u string) bool {
	return strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://")
}

func isSQLite(u string) bool { return strings.HasPrefix(u, "sqlite:") || strings.HasPrefix(u, "file:") }

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// SQLiteURL is the database URL of an SQLite file.
func SQLiteURL(path string) string { return "sqlite:" + path }

// OpenDB opens the read-model database and checks that it answers.
func OpenDB(ctx context.Context, cfg DBConfig) (*bun.DB, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var db *bun.DB
	if isPostgres(cfg.URL) {
		rt := cfg.ReadTimeout
		if rt <= 0 {
			rt = 10 * time.Second
		}
		sqldb := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(cfg.URL),
			pgdriver.WithTimeout(5*time.Second), pgdriver.WithReadTimeout(rt)))
		n := cfg.MaxOpenConns
		if n <= 0 {
			n = 16
		}
		sqldb.SetMaxOpenConns(n)
		sqldb.SetMaxIdleConns(n)
		db = bun.NewDB(sqldb, pgdialect.New())
	} else {
		path := strings.TrimPrefix(strings.TrimPrefix(cfg.URL, "sqlite:"), "file:")
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("projections: %w", err)
		}
		if !strings.Contains(cfg.URL, "mode=memory") && !strings.HasPrefix(path, ":memory:") {
			if err := privateSQLiteFiles(path); err != nil {
				return nil, err
			}
		}
		dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
			"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(ON)&_txlock=immediate"
		sqldb, err := sql.Open("sqlite", dsn)
		if err != nil {
			return nil, fmt.Errorf("projections: open sqlite: %w", err)
		}
		n := cfg.MaxOpenConns
		if n <= 0 {
			n = 8
		}
		sqldb.SetMaxOpenConns(n)
		db = bun.NewDB(sqldb, sqlitedialect.New())
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("projections: database %s does not answer: %w", redact(cfg.URL), err)
	}
	return db, nil
}

// privateSQLiteFiles makes the read model's files readable by their owner only: the database
// (created here, empty, before SQLite opens it) and, if they are left over, its -wal and -shm
// files, all 0600. SQLite creates a missing file 0644 but gives its -wal and -shm the mode of the
// database file, so creating the database 0600 keeps the journals private too. Files an earlier
// version created 0644 are tightened where they are ours to change; a file of another user (a
// tool reading the service's database) is left as it is for SQLite to open or refuse.
func privateSQLiteFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600) //nolint:gosec // the configured database path
	switch {
	case err == nil:
		_ = f.Close()
	case !errors.Is(err, os.ErrExist):
		return fmt.Errorf("projections: sqlite file: %w", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
			_ = os.Chmod(p, fi.Mode().Perm()&0o700) // best effort: EPERM on another user's file
		}
	}
	return nil
}

// IsPG reports whether db speaks PostgreSQL.
func IsPG(db bun.IDB) bool { return db.Dialect().Name().String() == "pg" }
