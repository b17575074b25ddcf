// Command identityctl is the auditor's and operator's tool for identityd: it follows and exports
// the event stream, rebuilds a user's state at any instant from the stream alone, reports and
// rebuilds projections, and verifies read models and hash chains against the stream.
//
// It reads the same IDENTITYD_* variables as identityd, so it works against any deployment,
// including a running identityd on embedded defaults (same IDENTITYD_DATA_DIR and
// IDENTITYD_NATS_LISTEN). Output is JSON, one object per line; progress goes to stderr on a
// terminal only.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
)

// Exit codes.
const (
	exitOK       = 0
	exitFindings = 1 // verify found differences; users show found no such user
	exitUsage    = 2
	exitError    = 3 // could not run: unreachable NATS or database, bad data
)

const usage = `identityctl: audit and operate identityd

Usage:
  identityctl [global flags] events tail [--user ID] [--type T] [--from-start] [--count N]
  identityctl [global flags] events export [--since T] [--until T] [--user ID] [--type T]
  identityctl [global flags] users show ID [--as-of TIME]
  identityctl [global flags] projections status
  identityctl [global flags] projections rebuild [users]
  identityctl [global flags] verify
  identityctl [global flags] nats credentials [--seed]
  identityctl nats keys --dir DIR

Global flags (each also an environment variable, as for identityd):
  --nats-url URL        IDENTITYD_NATS_URL; unset: nats://IDENTITYD_NATS_LISTEN (default 127.0.0.1:14222)
  --nats-creds FILE     IDENTITYD_NATS_CREDS: nkey seed or .creds file; unset: the reader's key
                        in IDENTITYD_DATA_DIR/credentials when it exists. identityctl only reads:
                        read-only (reader) credentials are enough
  --database-url URL    IDENTITYD_DATABASE_URL; unset: SQLite in IDENTITYD_DATA_DIR (default ./data)
  --data-dir DIR        IDENTITYD_DATA_DIR
  --event-keys KEYS     IDENTITYD_EVENT_PUBLIC_KEYS: trusted event public keys (ed25519:...),
                        comma-separated; unset: the keys identityd wrote to DATA_DIR/event-keys.pub
  --events-unsigned-through SEQ
                        IDENTITYD_EVENTS_UNSIGNED_THROUGH: accept unsigned (pre-signing) events up to SEQ

nats credentials prints where the read-only reader key of an identityd on embedded NATS is (the
data dir's credentials/reader.nk, 0600) and its public key; --seed prints the seed file itself,
to hand to a subscriber. nats keys creates (or keeps) identityd's and the reader's seeds in DIR
(0600) and writes DIR/nats-users.conf, the nats-server include file with their public keys
and permissions, for an external NATS (deploy/nats.conf).

Times are RFC 3339 (2026-11-22T10:00:00Z). Output is JSON, one object per line.
Events whose signature does not verify are refused: tail and export skip them with a note on
stderr, users show leaves them out, verify reports each as a difference.
Exit codes: 0 ok, 1 differences found / no such user, 2 usage, 3 error.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli is one invocation: its settings, output and lazily opened connections.
type cli struct {
	natsURL, dbURL string
	natsCreds      string // "" connects without credentials
	sqlitePath     string // set when the read model is the embedded default
	dataDir        string
	// eventKeys are the trusted event public keys as text ("": identityd's key file in the
	// data dir); unsignedThrough accepts unsigned events up to that stream sequence.
	eventKeys       string
	unsignedThrough uint64
	// secretKey is identityd's IDENTITYD_SECRET_KEY if set: with it (or the data dir's
	// secret.key) events are verified by their MAC, a fiftieth of the signature's cost.
	secretKey string
	// signaturesOnly verifies every event's Ed25519 signature, as a subscriber does, even with
	// the secret key at hand (verify: the audit must see what consumers see).
	signaturesOnly bool
	out            *json.Encoder
	stdout         io.Writer
	stderr         io.Writer
	tty            bool

	reader *wiring.Reader
	db     *bun.DB
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("identityctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	natsURL := fs.String("nats-url", getenv("IDENTITYD_NATS_URL"), "")
	natsCreds := fs.String("nats-creds", getenv("IDENTITYD_NATS_CREDS"), "")
	dbURL := fs.String("database-url", getenv("IDENTITYD_DATABASE_URL"), "")
	dataDir := fs.String("data-dir", getenv("IDENTITYD_DATA_DIR"), "")
	eventKeys := fs.String("event-keys", getenv("IDENTITYD_EVENT_PUBLIC_KEYS"), "")
	unsignedThrough := fs.String("events-unsigned-through", getenv("IDENTITYD_EVENTS_UNSIGNED_THROUGH"), "")
	if err := fs.Parse(args); err != nil || fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *dataDir == "" {
		*dataDir = "./data"
	}
	c := &cli{natsURL: *natsURL, natsCreds: *natsCreds, dbURL: *dbURL,
		out: json.NewEncoder(stdout), stdout: stdout, stderr: stderr, tty: isTerminal(stderr)}
	if c.natsCreds == "" {
		c.natsCreds = embedded.DefaultReaderCredentials(*dataDir)
	}
	if c.natsURL == "" {
		listen := getenv("IDENTITYD_NATS_LISTEN")
		if listen == "" {
			listen = "127.0.0.1:14222"
		}
		c.natsURL = "nats://" + listen
	}
	c.dataDir, c.eventKeys, c.secretKey = *dataDir, *eventKeys, getenv("IDENTITYD_SECRET_KEY")
	if *unsignedThrough != "" {
		n, err := strconv.ParseUint(*unsignedThrough, 10, 64)
		if err != nil {
			fmt.Fprintf(stderr, "identityctl: --events-unsigned-through: want a stream sequence, got %q\n", *unsignedThrough)
			return exitUsage
		}
		c.unsignedThrough = n
	}
	if c.dbURL == "" {
		c.sqlitePath = filepath.Join(*dataDir, "identityd.db")
		c.dbURL = projections.SQLiteURL(c.sqlitePath)
	}
	defer c.close()

	rest := fs.Args()
	var err error
	switch strings.Join(rest[:min(2, len(rest))], " ") {
	case "events tail":
		err = c.eventsTail(ctx, rest[2:])
	case "events export":
		err = c.eventsExport(ctx, rest[2:])
	case "users show":
		err = c.usersShow(ctx, rest[2:])
	case "projections status":
		err = c.projectionsStatus(ctx, rest[2:])
	case "projections rebuild":
		err = c.projectionsRebuild(ctx, rest[2:])
	case "nats credentials":
		err = c.natsCredentials(rest[2:])
	case "nats keys":
		err = c.natsKeys(rest[2:])
	default:
		if rest[0] == "verify" {
			err = c.verify(ctx, rest[1:])
		} else {
			err = usageError{"unknown command: " + strings.Join(rest, " ")}
		}
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errFindings):
		return exitFindings
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "identityctl: %s\n\n%s", ue.msg, usage)
		return exitUsage
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return exitOK // interrupted tail or export
	default:
		fmt.Fprintln(stderr, "identityctl:", err)
		return exitError
	}
}

// errFindings means the command ran and found something wrong (already printed).
var errFindings = errors.New("findings")

// flags parses a subcommand's flags; positional arguments come back in order.
func subFlags(name string, args []string, define func(*flag.FlagSet)) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	define(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{name + ": " + err.Error()}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, usageError{fmt.Sprintf("--%s: want an RFC 3339 time such as 2026-11-22T10:00:00Z, got %q", name, v)}
	}
	return t, nil
}

func (c *cli) events(ctx context.Context) (*eventstore.Store, error) {
	if c.reader != nil {
		return c.reader.Store, nil
	}
	r, err := wiring.OpenReader(ctx, wiring.ReaderConfig{
		NATSURL: c.natsURL, NATSCreds: c.natsCreds, Name: "identityctl",
		EventKeys: c.eventKeys, DataDir: c.dataDir, UnsignedThrough: c.unsignedThrough,
		SecretKey: c.secretKey, SignaturesOnly: c.signaturesOnly,
	})
	if err != nil {
		return nil, err
	}
	c.reader = r
	return r.Store, nil
}

// database opens the read-model database. Unless create is set, an embedded-default SQLite
// file must already exist (a typo in IDENTITYD_DATA_DIR should not look like an empty system).
func (c *cli) database(ctx context.Context, create bool) (*bun.DB, error) {
	if c.db != nil {
		return c.db, nil
	}
	if c.sqlitePath != "" && !create {
		if _, err := os.Stat(c.sqlitePath); err != nil {
			return nil, fmt.Errorf("no read model at %s (set IDENTITYD_DATA_DIR to identityd's data dir, or IDENTITYD_DATABASE_URL): %w", c.sqlitePath, err)
		}
	}
	db, err := wiring.OpenReadModel(ctx, c.dbURL)
	if err != nil {
		return nil, err
	}
	c.db = db
	return db, nil
}

// both opens the read-model database and the event store, for the commands that compare or
// rebuild one from the other.
func (c *cli) both(ctx context.Context, create bool) (*bun.DB, *eventstore.Store, error) {
	db, err := c.database(ctx, create)
	if err != nil {
		return nil, nil, err
	}
	st, err := c.events(ctx)
	return db, st, err
}

func (c *cli) close() {
	if c.reader != nil {
		c.reader.Close()
	}
	if c.db != nil {
		_ = c.db.Close()
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progress shows count, rate and ETA on a terminal, at most ten times a second.
type progress struct {
	c     *cli
	what  string
	start time.Time
	last  time.Time
}

func (c *cli) newProgress(what string) *progress {
	return &progress{c: c, what: what, start: time.Now()}
}

func (p *progress) update(done, total uint64) {
	if !p.c.tty || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	elapsed := time.Since(p.start).Seconds()
	rate := float64(done) / max(elapsed, 1e-9)
	eta := "?"
	if rate > 0 && total >= done {
		eta = (time.Duration(float64(total-done)/rate) * time.Second).Round(time.Second).String()
	}
	fmt.Fprintf(p.c.stderr, "\r%s: %d/%d events, %.0f/s, ETA %s   ", p.what, done, total, rate, eta)
}

func (p *progress) done() {
	if p.c.tty {
		fmt.Fprintln(p.c.stderr)
	}
}
