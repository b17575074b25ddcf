// Package wiring builds identityd's object graph from one Config: NATS (embedded, with the
// keys it generates, or external), the event keys, the event store, the read-model database,
// the projector, the credential cache with instance presence, the domain service, the
// bootstrap administrator and the HTTP API, closed again in dependency order (Start, App.Close).
// It also opens the reader's side an auditor uses (OpenReader, OpenReadModel) and runs the
// consistency check (Verify), so identityd, identityctl and the tests share one wiring.
//
// Files: wiring.go (Config, Start, App), nats.go (the service's NATS connection), secret.go
// (the data dir's secret key), bootstrap.go (the first administrator), reader.go (an auditor's
// store and read model), verify.go (the check behind `identityctl verify`).
package wiring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/cmd/internal/eventkeys"
	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/credcache"
	"github.com/identityd/identityd/transport/httpapi"
)

// Config is everything one identityd instance is built from (cmd/identityd reads it from flags
// and the environment; tests fill it directly).
type Config struct {
	DataDir      string
	NATSURL      string // "" runs an embedded NATS server
	NATSListen   string // the embedded server's client address
	NATSCreds    string // identityd's credentials for an external NATS
	NATSReplicas int
	DatabaseURL  string // "" is SQLite in DataDir
	SecretKey    []byte // nil: generated into DataDir
	// EventSigningSeed overrides the event-signing key derived from SecretKey (rotation).
	EventSigningSeed []byte
	// EventPublicKeys are further trusted event public keys (earlier rotations), as text.
	EventPublicKeys string
	// UnsignedThrough is the last stream sequence at which unsigned (pre-signing) events are
	// accepted.
	UnsignedThrough uint64
	PublicURL       string
	SessionTTL      time.Duration
	Argon2MemKiB    uint32
	Argon2Time      uint32
	ConsistencyMax  time.Duration
	CacheLease      time.Duration // 0 turns the credential cache off
	CacheEntries    int
	// BootstrapAdmin is the first administrator: a user id, or an e-mail resolved at start-up
	// to the id of the account holding it (bootstrapAdmin). "" for none.
	BootstrapAdmin string
	TrustedProxies []string
	// Presence holds the timings of the instance registry (credcache.PresenceConfig); not a
	// setting: zero takes the defaults, tests shorten them.
	Presence credcache.PresenceConfig
	// Logger receives the instance's logs; nil discards them.
	Logger *slog.Logger
}

// App is one running identityd instance: everything but the HTTP listener.
type App struct {
	api       *httpapi.API
	svc       *domain.Service
	store     *eventstore.Store
	projector *projections.Projector
	usage     *projections.UsageTracker
	db        *bun.DB
	pingDB    *bun.DB             // one connection of its own for the cache lease's check
	cache     *credcache.Cache    // nil when turned off
	presence  *credcache.Presence // registers this instance for cache leases; nil with the cache off
	lease     time.Duration       // the cache's lease
	nc        *nats.Conn
	ns        *server.Server // nil with an external NATS
	logger    *slog.Logger
	runDone   chan error
	cancel    context.CancelFunc
}

// API is the HTTP API, to be served by the caller.
func (a *App) API() *httpapi.API { return a.api }

// Service is the domain service the API writes through.
func (a *App) Service() *domain.Service { return a.svc }

// Store is the event store, opened with the instance's signing key.
func (a *App) Store() *eventstore.Store { return a.store }

// Projector is the running projector that keeps the read model.
func (a *App) Projector() *projections.Projector { return a.projector }

// Cache is the credential cache; nil when CacheLease is 0.
func (a *App) Cache() *credcache.Cache { return a.cache }

// Presence is the instance's entry in the registry of cache holders; nil with the cache off.
func (a *App) Presence() *credcache.Presence { return a.presence }

// NATS is the instance's NATS connection.
func (a *App) NATS() *nats.Conn { return a.nc }

// EmbeddedNATS is the in-process NATS server; nil with an external NATS.
func (a *App) EmbeddedNATS() *server.Server { return a.ns }

// Start builds and starts an instance: everything but the HTTP listener. On error, what was
// started is closed again.
func Start(ctx context.Context, cfg Config) (_ *App, err error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a := &App{logger: logger}
	defer func() { //nolint:contextcheck // tearing down a failed start: each close bounds its own requests
		if err != nil {
			a.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil { // secret key, event store, read model: owner only
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := a.connectNATS(cfg); err != nil {
		return nil, err
	}
	key := cfg.SecretKey
	if key == nil {
		if key, err = loadOrCreateKey(filepath.Join(cfg.DataDir, eventkeys.SecretFileName)); err != nil {
			return nil, err
		}
	}
	signer, err := eventkeys.Signer(key, cfg.EventSigningSeed)
	if err != nil {
		return nil, err
	}
	keys, err := eventkeys.ServiceKeyring(key, signer, cfg.EventPublicKeys, cfg.UnsignedThrough)
	if err != nil {
		return nil, err
	}
	if err := eventkeys.WriteFile(cfg.DataDir, signer, keys); err != nil {
		return nil, err
	}
	a.store, err = eventstore.Open(ctx, eventstore.Config{Conn: a.nc, Replicas: cfg.NATSReplicas, Keys: keys, Signer: signer})
	if err != nil {
		return nil, err
	}
	logger.Info("events are signed", "key_id", signer.PublicKey().KeyID(), "public_key", signer.PublicKey().String())

	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		dbURL = projections.SQLiteURL(filepath.Join(cfg.DataDir, "identityd.db"))
	}
	a.db, err = projections.OpenDB(ctx, projections.DBConfig{URL: dbURL})
	if err != nil {
		return nil, err
	}
	a.projector, err = projections.NewProjector(ctx, projections.ProjectorConfig{DB: a.db, JetStream: a.store.JetStream(), Keys: a.store.Keys(), Logger: logger})
	if err != nil {
		return nil, err
	}
	rm := projections.NewReadModel(a.db, projections.CurrentTables)
	var creds httpapi.Credentials = rm
	var fence httpapi.Fence
	if cfg.CacheLease > 0 {
		if a.pingDB, err = projections.OpenDB(ctx, projections.DBConfig{URL: dbURL, MaxOpenConns: 1}); err != nil {
			return nil, err
		}
		a.lease = cfg.CacheLease
		pcfg := PresenceConfig(cfg, a.nc, a.store.StreamConfig().Replicas)
		if m := pcfg.WithDefaults().Margin; m <= 2*cfg.CacheLease {
			return nil, fmt.Errorf("instance registry margin %s must exceed twice the cache lease %s", m, cfg.CacheLease)
		}
		if a.presence, err = credcache.OpenPresence(ctx, pcfg); err != nil {
			return nil, err
		}
		// Before the projector runs, so the cache sees every event arrive.
		a.cache, err = credcache.New(credcache.Config{ //nolint:contextcheck // its health check lives until close, not for this call
			ReadModel: rm, Head: a.store.LastSequence, Projection: a.projector, Lease: cfg.CacheLease, MaxEntries: cfg.CacheEntries,
			Peers: a.presence,
			Ping:  func(ctx context.Context) error { _, err := a.pingDB.ExecContext(ctx, "SELECT 1"); return err },
		})
		if err != nil {
			return nil, err
		}
		creds, fence = a.cache, a.cache
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	a.runDone = make(chan error, 1)
	go func() { a.runDone <- a.projector.Run(runCtx) }()
	select {
	case <-a.projector.Running():
	case err := <-a.runDone:
		return nil, fmt.Errorf("projector: %w", err)
	case <-time.After(30 * time.Second):
		return nil, errors.New("projector did not start within 30s")
	}

	a.svc, err = domain.NewService(a.store, domain.ServiceConfig{
		Password:          domain.PasswordParams{MemoryKiB: cfg.Argon2MemKiB, Time: cfg.Argon2Time, Threads: 1},
		SessionTTL:        cfg.SessionTTL,
		IdempotencySecret: key,
	})
	if err != nil {
		return nil, err
	}
	seq, err := bootstrapAdmin(ctx, cfg.BootstrapAdmin, a.svc, a.store, logger)
	if err != nil {
		return nil, err
	}
	if err := waitBootstrap(ctx, a.projector, seq); err != nil {
		return nil, err
	}
	a.usage = projections.NewUsageTracker(ctx, rm, time.Second, logger)
	a.api, err = httpapi.New(httpapi.Config{
		Service: a.svc, Credentials: creds, ReadModel: rm, Barrier: a.projector, Fence: fence, Usage: a.usage,
		EventKeys: httpapi.EventKeys{Signing: signer.PublicKey(), Trusted: a.store.Keys()},
		PublicURL: cfg.PublicURL, ConsistencyTimeout: cfg.ConsistencyMax, Logger: logger,
		TrustedProxies: cfg.TrustedProxies,
		Ready: func(ctx context.Context) error {
			if !a.nc.IsConnected() {
				return errors.New("NATS disconnected")
			}
			return a.db.PingContext(ctx)
		},
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// PresenceConfig is the instance registry's configuration: the test timings if set, else
// the defaults, stretched for a lease over 100ms (the margin must cover a lease many times).
func PresenceConfig(cfg Config, nc *nats.Conn, replicas int) credcache.PresenceConfig {
	p := cfg.Presence
	p.Conn, p.Replicas = nc, replicas
	if p.Margin <= 0 && cfg.CacheLease > 100*time.Millisecond {
		p.Margin = 10 * cfg.CacheLease
		p.TTL, p.Grace = p.Margin+9*time.Second, p.Margin+2*time.Second
	}
	return p
}

// Close stops the instance in dependency order; it tolerates a partly started App.
func (a *App) Close() {
	if a.cancel != nil {
		a.cancel()
	}
	if a.projector != nil {
		_ = a.projector.Close()
		if a.runDone != nil {
			if err := <-a.runDone; err != nil {
				a.logger.Warn("projector stopped with an error", "err", err)
			}
		}
	}
	if a.usage != nil {
		a.usage.Close()
	}
	if a.presence != nil {
		a.presence.Close(a.lease) // no new lease from here; others stop waiting for this instance
	}
	if a.cache != nil {
		a.cache.Close()
	}
	if a.nc != nil {
		_ = a.nc.Drain()
	}
	if a.db != nil {
		_ = a.db.Close()
	}
	if a.pingDB != nil {
		_ = a.pingDB.Close()
	}
	if a.ns != nil {
		a.ns.Shutdown()
		a.ns.WaitForShutdown()
	}
}
