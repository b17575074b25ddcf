package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/cmd/internal/eventkeys"
	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/credcache"
	"github.com/identityd/identityd/transport/httpapi"
)

// app is one identityd instance, wired explicitly: embedded or external NATS → event store →
// domain service; read-model database → projector and read model; all of it → HTTP API.
type app struct {
	api       *httpapi.API
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

// newApp starts everything but the HTTP listener.
func newApp(ctx context.Context, cfg config, logger *slog.Logger) (_ *app, err error) {
	a := &app{logger: logger}
	defer func() { //nolint:contextcheck // tearing down a failed start: each close bounds its own requests
		if err != nil {
			a.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil { // secret key, event store, read model: owner only
		return nil, fmt.Errorf("data dir: %w", err)
	}

	natsURL, natsCreds := cfg.NATSURL, cfg.NATSCreds
	if natsURL == "" {
		keys, err := embedded.LoadOrCreateKeys(embedded.KeyDir(cfg.DataDir))
		if err != nil {
			return nil, err
		}
		a.ns, err = embedded.Start(embedded.Config{StoreDir: filepath.Join(cfg.DataDir, "nats"), Listen: cfg.NATSListen, Keys: keys})
		if err != nil {
			return nil, err
		}
		natsURL, natsCreds = a.ns.ClientURL(), keys.IdentitydSeed()
		logger.Info("embedded NATS JetStream started", "url", natsURL, "store", filepath.Join(cfg.DataDir, "nats"),
			"reader_credentials", keys.ReaderSeed())
		if !embedded.Loopback(cfg.NATSListen) {
			logger.Warn("embedded NATS listens beyond this host; clients still need the reader's or identityd's key",
				"listen", cfg.NATSListen)
		}
	} else if natsCreds == "" {
		logger.Warn("connecting to NATS without credentials: anyone who reaches it may publish events; set IDENTITYD_NATS_CREDS",
			"url", eventstore.RedactURL(natsURL))
	}
	var auth []nats.Option
	if natsCreds != "" {
		if auth, err = embedded.ClientOptions(natsCreds, true); err != nil {
			return nil, err
		}
	} else {
		auth = []nats.Option{nats.CustomInboxPrefix(embedded.IdentitydInboxPrefix)}
	}
	var store *eventstore.Store
	a.nc, err = nats.Connect(natsURL, append(auth, nats.Name("identityd"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Warn("NATS disconnected", "err", err)
			if store != nil {
				store.ConnectionLost() // appends waiting for an ack answer 503 now, not after their timeout
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
		// Permission refusals arrive here, not as the refused call's error.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { logger.Error("NATS error", "err", err) }))...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", eventstore.RedactURL(natsURL), err)
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
	store, err = eventstore.Open(ctx, eventstore.Config{Conn: a.nc, Replicas: cfg.NATSReplicas, Keys: keys, Signer: signer})
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
	a.projector, err = projections.NewProjector(ctx, projections.ProjectorConfig{DB: a.db, JetStream: store.JetStream(), Keys: store.Keys(), Logger: logger})
	if err != nil {
		return nil, err
	}
	rm := projections.NewReadModel(a.db, projections.CurrentTables)
	var creds httpapi.ReadModel = rm
	var fence httpapi.Fence
	if cfg.CacheLease > 0 {
		if a.pingDB, err = projections.OpenDB(ctx, projections.DBConfig{URL: dbURL, MaxOpenConns: 1}); err != nil {
			return nil, err
		}
		a.lease = cfg.CacheLease
		pcfg := presenceConfig(cfg, a.nc, store.StreamConfig().Replicas)
		if m := pcfg.WithDefaults().Margin; m <= 2*cfg.CacheLease {
			return nil, fmt.Errorf("instance registry margin %s must exceed twice the cache lease %s", m, cfg.CacheLease)
		}
		if a.presence, err = credcache.OpenPresence(ctx, pcfg); err != nil {
			return nil, err
		}
		// Before the projector runs, so the cache sees every event arrive.
		a.cache, err = credcache.New(credcache.Config{ //nolint:contextcheck // its health check lives until close, not for this call
			ReadModel: rm, Head: store.LastSequence, Projection: a.projector, Lease: cfg.CacheLease, MaxEntries: cfg.CacheEntries,
			Peers: a.presence,
			Ping:  func(ctx context.Context) error { _, err := a.pingDB.ExecContext(ctx, "SELECT 1"); return err },
		})
		if err != nil {
			return nil, err
		}
		creds, fence = cachedCredentials{ReadModel: rm, Cache: a.cache}, a.cache
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

	svc, err := domain.NewService(store, domain.ServiceConfig{
		Password:          domain.PasswordParams{MemoryKiB: cfg.Argon2MemKiB, Time: cfg.Argon2Time, Threads: 1},
		SessionTTL:        cfg.SessionTTL,
		IdempotencySecret: key,
	})
	if err != nil {
		return nil, err
	}
	seq, err := bootstrapAdmin(ctx, cfg.BootstrapAdmin, svc, store, logger)
	if err != nil {
		return nil, err
	}
	if err := waitBootstrap(ctx, a.projector, seq); err != nil {
		return nil, err
	}
	a.usage = projections.NewUsageTracker(ctx, rm, time.Second, logger)
	a.api, err = httpapi.New(httpapi.Config{
		Service: svc, ReadModel: creds, Barrier: a.projector, Fence: fence, Usage: a.usage,
		EventKeys: httpapi.EventKeys{Signing: signer.PublicKey(), Trusted: store.Keys()},
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

// presenceConfig is the instance registry's configuration: the test timings if set, else
// the defaults, stretched for a lease over 100ms (the margin must cover a lease many times).
func presenceConfig(cfg config, nc *nats.Conn, replicas int) credcache.PresenceConfig {
	p := cfg.Presence
	p.Conn, p.Replicas = nc, replicas
	if p.Margin <= 0 && cfg.CacheLease > 100*time.Millisecond {
		p.Margin = 10 * cfg.CacheLease
		p.TTL, p.Grace = p.Margin+9*time.Second, p.Margin+2*time.Second
	}
	return p
}

// close stops the instance in dependency order; it tolerates a partly started app.
func (a *app) close() {
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

// loadOrCreateKey reads the instance's secret key, creating it (0600) on first start.
func loadOrCreateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path) //nolint:gosec // path is under the configured data dir
	if err == nil {
		key, derr := hex.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(key) < 32 {
			return nil, fmt.Errorf("%s: not a hex key of at least 32 bytes", path)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write secret key: %w", err)
	}
	return key, nil
}

// cachedCredentials is the read model with credential lookups answered by the cache.
type cachedCredentials struct {
	*projections.ReadModel
	*credcache.Cache
}

// APITokenByDigest is the cache's.
func (c cachedCredentials) APITokenByDigest(ctx context.Context, digest string) (projections.Credential, error) {
	return c.Cache.APITokenByDigest(ctx, digest)
}

// User is the cache's: it refreshes cached profiles marked stale by a rename.
func (c cachedCredentials) User(ctx context.Context, id uuid.UUID) (projections.UserRow, error) {
	return c.Cache.User(ctx, id)
}

// SessionByDigest is the cache's.
func (c cachedCredentials) SessionByDigest(ctx context.Context, digest string) (projections.Credential, error) {
	return c.Cache.SessionByDigest(ctx, digest)
}
