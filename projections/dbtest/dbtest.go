// Package dbtest gives tests a real, throwaway read-model database: a fresh PostgreSQL
// database (created on the server named by IDENTITYD_TEST_DATABASE_URL, dropped afterwards)
// or a fresh SQLite file. It never skips: without a reachable PostgreSQL the test fails and
// says how to get one (`make test` starts or creates one).
package dbtest

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/identityd/identityd/projections/sqldb"
)

// DefaultAdminURL is used when IDENTITYD_TEST_DATABASE_URL is unset.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL is the PostgreSQL server the tests create their databases on.
func AdminURL() string {
	if u := os.Getenv("IDENTITYD_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultAdminURL
}

// PostgresURL creates an empty database for this test and returns its URL.
func PostgresURL(t testing.TB) string {
	t.Helper()
	admin := AdminURL()
	adb := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(admin), pgdriver.WithTimeout(5*time.Second)))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := adb.PingContext(ctx); err != nil {
		_ = adb.Close()
		t.Fatalf("PostgreSQL is required for this test and did not answer at %s: %v\n"+
			"run the tests with `make test` (it starts or creates a PostgreSQL), or set IDENTITYD_TEST_DATABASE_URL", redact(admin), err)
	}
	name := "identityd_test_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	if _, err := adb.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		_ = adb.Close()
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := adb.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
		_ = adb.Close()
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("IDENTITYD_TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// SQLiteURL returns the URL of a fresh SQLite file for this test.
func SQLiteURL(t testing.TB) string {
	t.Helper()
	return sqldb.SQLiteURL(filepath.Join(t.TempDir(), "readmodel.db"))
}

// Open opens a database URL for the test and closes it afterwards.
func Open(t testing.TB, dbURL string) *bun.DB {
	t.Helper()
	db, err := sqldb.OpenDB(context.Background(), sqldb.DBConfig{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// Backend is one read-model database implementation, for contract suites.
type Backend struct {
	Name string
	URL  func(testing.TB) string
}

// Backends are every read-model database identityd supports.
var Backends = []Backend{
	{Name: "postgres", URL: PostgresURL},
	{Name: "sqlite", URL: SQLiteURL},
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return fmt.Sprint(u.Redacted())
}
