// Command example-subscriber shows how a downstream service consumes identityd's user events
// correctly. It is a "mailing list provisioner": it keeps a local list of subscribed accounts,
// adding one on UserRegistered, renaming it on UserRenamed and removing it on UserDeleted.
//
// What it demonstrates, in order of importance:
//
//   - Exactly once in effect. JetStream delivers at least once: a message is redelivered if its
//     ack is lost or the consumer crashes before acking. The provisioner therefore stores, with
//     its data and in one atomic file write, the stream sequence of the last event it applied,
//     writes that file BEFORE acking, and acks-and-skips any message at or below that sequence.
//     See run.go (handle) and state.go (save).
//   - A durable pull consumer with DeliverAllPolicy, so a service that starts late (or a new
//     durable name) receives the full history, and a restart resumes where it stopped.
//   - In-order processing: MaxAckPending 1 and one goroutine handling one message at a time.
//   - Decoding only through the public contract, events.Keyring.Decode, which checks each
//     event's signature against identityd's public keys: a forged event is refused (logged,
//     terminated, never applied); an event this build cannot read stops it loudly (not skipping).
//
// The code is split so the core is testable: main only parses configuration and wires a NATS
// connection; run (run.go) consumes; provisioner (state.go) folds events into state.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/cmd/internal/eventkeys"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
)

// config is what the example can be told, plus knobs that only tests change.
type config struct {
	NATSURL   string     // IDENTITYD_NATS_URL / --nats-url
	NATSCreds string     // IDENTITYD_NATS_CREDS / --nats-creds; "" connects without credentials
	Durable   string     // EXAMPLE_SUBSCRIBER_DURABLE / --durable
	StatePath string     // EXAMPLE_SUBSCRIBER_STATE / --state
	LogLevel  slog.Level // IDENTITYD_LOG_LEVEL / --log-level
	// Keys verifies every event's signature: from IDENTITYD_EVENT_PUBLIC_KEYS / --event-keys,
	// or else the key file of identityd's data dir (IDENTITYD_DATA_DIR / --data-dir).
	Keys *events.Keyring

	// Not settable from the command line; zero values take defaults in run.
	Stream  string        // default events.StreamName
	AckWait time.Duration // default 30s: how long before an unacked message is redelivered
	Logger  *slog.Logger  // default slog.Default()

	// Test hooks (nil in production).
	//
	// afterSave runs after the state file holding the event at seq has been written and before
	// the message is acked. Returning an error stops run at exactly that point, which is how
	// the tests simulate a crash between "write" and "ack".
	afterSave func(seq uint64) error
	// onSkip runs when a message at or below the stored sequence is acked and skipped.
	onSkip func(seq uint64)
	// onRefused runs when an event is refused because its signature does not verify.
	onRefused func(seq uint64)
}

// setting is one configuration value: an environment variable and a flag; the flag wins.
type setting struct{ env, flag, def, help string }

var settings = []setting{
	// The embedded NATS server of an identityd running on defaults listens here
	// (IDENTITYD_NATS_LISTEN); point it at your NATS cluster in any other deployment.
	{"IDENTITYD_NATS_URL", "nats-url", "nats://127.0.0.1:14222", "NATS server holding identityd's IDENTITY stream"},
	// identityd's NATS admits only nkey users; subscribers use the read-only reader's seed,
	// which an identityd on defaults writes to <data dir>/credentials/reader.nk (0600).
	{"IDENTITYD_NATS_CREDS", "nats-creds", "", "NATS credentials (nkey seed or .creds file), read-only ones; unset: <data-dir>/credentials/reader.nk if it exists"},
	{"EXAMPLE_SUBSCRIBER_DURABLE", "durable", "example-provisioner", "durable consumer name (one per independent copy of the state)"},
	{"EXAMPLE_SUBSCRIBER_STATE", "state", "./example-state.json", "state file: subscribed accounts and the last applied stream sequence"},
	{"IDENTITYD_LOG_LEVEL", "log-level", "info", "log level: debug, info, warn, error"},
	{"IDENTITYD_EVENT_PUBLIC_KEYS", "event-keys", "", "identityd's event public keys (ed25519:..., comma-separated; GET /api/v0/event-keys lists them); unset: read from the data dir"},
	{"IDENTITYD_DATA_DIR", "data-dir", "./data", "identityd's data dir on this host, whose event-keys.pub is read when --event-keys is unset and credentials/reader.nk when --nats-creds is"},
	{"IDENTITYD_EVENTS_UNSIGNED_THROUGH", "events-unsigned-through", "0", "accept unsigned events (written before identityd signed events) up to this stream sequence"},
}

// loadConfig reads flags over environment variables over defaults.
func loadConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("example-subscriber", flag.ContinueOnError)
	fs.SetOutput(stderr)
	vals := map[string]*string{}
	for _, s := range settings {
		def := s.def
		if v := getenv(s.env); v != "" {
			def = v
		}
		vals[s.env] = fs.String(s.flag, def, fmt.Sprintf("%s (env %s)", s.help, s.env))
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "example-subscriber: consumes identityd's user events into a local mailing list, exactly once in effect\n\n"+
			"Usage: example-subscriber [flags]\n\nFlags (each also an environment variable):\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	get := func(env string) string { return strings.TrimSpace(*vals[env]) }
	c := config{NATSURL: get("IDENTITYD_NATS_URL"), NATSCreds: get("IDENTITYD_NATS_CREDS"),
		Durable: get("EXAMPLE_SUBSCRIBER_DURABLE"), StatePath: get("EXAMPLE_SUBSCRIBER_STATE")}
	if c.NATSCreds == "" {
		c.NATSCreds = embedded.DefaultReaderCredentials(get("IDENTITYD_DATA_DIR"))
	}
	var errs []error
	if c.NATSURL == "" || c.Durable == "" || c.StatePath == "" {
		errs = append(errs, errors.New("--nats-url, --durable and --state must not be empty"))
	}
	if strings.ContainsAny(c.Durable, ".*> \t") {
		errs = append(errs, fmt.Errorf("--durable %q: a consumer name cannot contain '.', '*', '>' or spaces", c.Durable))
	}
	if err := c.LogLevel.UnmarshalText([]byte(get("IDENTITYD_LOG_LEVEL"))); err != nil {
		errs = append(errs, fmt.Errorf("IDENTITYD_LOG_LEVEL: %w", err))
	}
	if unsigned, err := strconv.ParseUint(get("IDENTITYD_EVENTS_UNSIGNED_THROUGH"), 10, 64); err != nil {
		errs = append(errs, errors.New("--events-unsigned-through: want a stream sequence"))
	} else if c.Keys, err = eventkeys.ReaderKeyring(get("IDENTITYD_EVENT_PUBLIC_KEYS"), get("IDENTITYD_DATA_DIR"), unsigned, nil); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

func main() { os.Exit(realMain()) }

// realMain wires configuration, logging, signals and the NATS connection, then hands over to
// run. It returns the process exit code so that deferred clean-ups run.
func realMain() int {
	cfg, err := loadConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "example-subscriber:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	cfg.Logger = log

	// SIGINT/SIGTERM cancel ctx; run finishes the message in hand (state written, ack sent)
	// and returns nil.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var auth []nats.Option
	if cfg.NATSCreds != "" {
		if auth, err = embedded.ClientOptions(cfg.NATSCreds, false); err != nil {
			fmt.Fprintln(os.Stderr, "example-subscriber:", err)
			return 2
		}
	}
	nc, err := nats.Connect(cfg.NATSURL, append(auth,
		nats.Name("example-subscriber/"+cfg.Durable),
		nats.MaxReconnects(-1), // keep trying: the durable consumer resumes after an outage
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close at shutdown
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Error("nats", "err", err) }),
	)...)
	if err != nil {
		log.Error("connect to NATS (is identityd running? it serves NATS on 127.0.0.1:14222 by default; "+
			"credentials: --nats-creds, default <data-dir>/credentials/reader.nk)",
			"url", cfg.NATSURL, "creds", cfg.NATSCreds, "err", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error("jetstream", "err", err)
		return 1
	}
	if err := run(ctx, js, cfg); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("stopped cleanly")
	return 0
}

// The events this provisioner needs. Filtering on the server keeps sessions, tokens, password
// changes and email claims off the wire; subjects are identity.user.<uuid>.<event>.
var filterSubjects = []string{
	events.SubjectRoot + ".user.*.registered",
	events.SubjectRoot + ".user.*.renamed",
	events.SubjectRoot + ".user.*.deleted",
}
