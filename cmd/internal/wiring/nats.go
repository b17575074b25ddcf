package wiring

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
)

// connectNATS starts the embedded NATS server (with the keys it generates in the data dir)
// unless an external one is configured, then connects as identityd, the stream's writer.
func (a *App) connectNATS(cfg Config) error {
	logger := a.logger
	natsURL, natsCreds := cfg.NATSURL, cfg.NATSCreds
	if natsURL == "" {
		keys, err := embedded.LoadOrCreateKeys(embedded.KeyDir(cfg.DataDir))
		if err != nil {
			return err
		}
		a.ns, err = embedded.Start(embedded.Config{StoreDir: filepath.Join(cfg.DataDir, "nats"), Listen: cfg.NATSListen, Keys: keys})
		if err != nil {
			return err
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
		var err error
		if auth, err = embedded.ClientOptions(natsCreds, true); err != nil {
			return err
		}
	} else {
		auth = []nats.Option{nats.CustomInboxPrefix(embedded.IdentitydInboxPrefix)}
	}
	var err error
	a.nc, err = nats.Connect(natsURL, append(auth, nats.Name("identityd"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Warn("NATS disconnected", "err", err)
			if a.store != nil {
				a.store.ConnectionLost() // appends waiting for an ack answer 503 now, not after their timeout
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
		// Permission refusals arrive here, not as the refused call's error.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { logger.Error("NATS error", "err", err) }))...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", eventstore.RedactURL(natsURL), err)
	}
	return nil
}
