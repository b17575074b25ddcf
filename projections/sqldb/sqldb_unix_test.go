//go:build unix

package sqldb

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestSQLiteFilesArePrivate: the SQLite read model holds every user's email and credential
// digests, so its file, -wal and -shm are 0600 and a data dir it creates is 0700, whatever
// SQLite's own default (0644) would be under the usual umask; files left 0644 by an earlier
// version are tightened on open.
func TestSQLiteFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask, under which SQLite would create 0644 files
	defer syscall.Umask(old)
	ctx := context.Background()

	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "identityd.db")
	db, err := OpenDB(ctx, DBConfig{URL: SQLiteURL(path)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	checkMode(t, dir, 0o700)
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		checkMode(t, p, 0o600)
	}
	_ = db.Close()

	// Left 0644 by an earlier version: tightened when opened again.
	legacy := filepath.Join(t.TempDir(), "legacy.db")
	for _, p := range []string{legacy, legacy + "-wal", legacy + "-shm"} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db, err = OpenDB(ctx, DBConfig{URL: SQLiteURL(legacy)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{legacy, legacy + "-wal", legacy + "-shm"} {
		checkMode(t, p, 0o600)
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %04o, want %04o", filepath.Base(path), got, want)
	}
}
