package wiring

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/cmd/internal/eventkeys"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
)

// ReaderConfig is how an auditor (identityctl, the tests' check after each scenario) reaches
// the stream: read-only, trusting the keys it is given or those identityd published.
type ReaderConfig struct {
	NATSURL   string
	NATSCreds string // nkey seed or .creds file; "" connects without credentials
	Name      string // the NATS client name
	// EventKeys are the trusted event public keys as text ("": identityd's key file in
	// DataDir); UnsignedThrough accepts unsigned events up to that stream sequence.
	EventKeys       string
	DataDir         string
	UnsignedThrough uint64
	// SecretKey is identityd's secret key in hex, if known ("": the data dir's secret file,
	// if readable): with it events are verified by their MAC. SignaturesOnly ignores it, so
	// every signature is checked as a subscriber checks it.
	SecretKey      string
	SignaturesOnly bool
}

// Reader is a read-only event store and the NATS connection it reads through.
type Reader struct {
	Store *eventstore.Store
	Conn  *nats.Conn
}

// Close closes the connection.
func (r *Reader) Close() { r.Conn.Close() }

// OpenReader connects to NATS and opens the event store read-only: it never creates or
// changes the stream, so the reader's key is enough.
func OpenReader(ctx context.Context, cfg ReaderConfig) (_ *Reader, err error) {
	var opts []nats.Option
	if cfg.NATSCreds != "" {
		if opts, err = embedded.ClientOptions(cfg.NATSCreds, false); err != nil {
			return nil, err
		}
	}
	nc, err := nats.Connect(cfg.NATSURL, append(opts, nats.Name(cfg.Name), nats.Timeout(5*time.Second))...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (set IDENTITYD_NATS_URL or IDENTITYD_NATS_LISTEN, and "+
			"--nats-creds / IDENTITYD_NATS_CREDS or IDENTITYD_DATA_DIR for the reader's key)", eventstore.RedactURL(cfg.NATSURL), err)
	}
	defer func() {
		if err != nil {
			nc.Close()
		}
	}()
	var secret []byte
	if !cfg.SignaturesOnly {
		if secret, err = eventkeys.ReadSecret(cfg.SecretKey, cfg.DataDir); err != nil {
			return nil, err
		}
	}
	keys, err := eventkeys.ReaderKeyring(cfg.EventKeys, cfg.DataDir, cfg.UnsignedThrough, secret)
	if err != nil {
		return nil, err
	}
	st, err := eventstore.Open(ctx, eventstore.Config{Conn: nc, Keys: keys, ReadOnly: true})
	if err != nil {
		return nil, err
	}
	return &Reader{Store: st, Conn: nc}, nil
}

// OpenReadModel opens the read-model database for an auditor's or operator's command. Rebuilds
// copy millions of rows and build indexes over them, so one answer may take minutes.
func OpenReadModel(ctx context.Context, url string) (*bun.DB, error) {
	return projections.OpenDB(ctx, projections.DBConfig{URL: url, ReadTimeout: 30 * time.Minute})
}
