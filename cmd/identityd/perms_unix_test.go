//go:build unix

package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

// TestDataDirIsPrivate: a data dir identityd creates is 0700 and the SQLite read model in it
// (with its -wal and -shm) 0600, under the usual umask.
func TestDataDirIsPrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	e := newEnv(t, dbtest.Backends[1])
	dir := filepath.Join(t.TempDir(), "data")
	e.DBURL = projections.SQLiteURL(filepath.Join(dir, "identityd.db")) // where identityd puts it by default
	in := e.startWith(func(c *wiring.Config) { c.DataDir = dir })
	signUp(t, in.URL, "perlman@example.com", "Radia") // writes: the WAL exists
	want := map[string]os.FileMode{dir: 0o700}
	for _, f := range []string{"identityd.db", "identityd.db-wal", "identityd.db-shm"} {
		want[filepath.Join(dir, f)] = 0o600
	}
	for p, mode := range want {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %04o, want %04o", p, fi.Mode().Perm(), mode)
		}
	}
}
