// Package embedded runs an in-process NATS server with JetStream, so identityd starts as a
// single binary with no infrastructure and tests get a real server on a random port.
//
// The server always authenticates: it admits two nkey users (LoadOrCreateKeys), identityd,
// the only one that may publish events, and a read-only reader for subscribers and tools
// (IdentitydPermissions, ReaderPermissions). A client without one of their seeds is refused.
// ServerConfig renders the same users for an external nats-server.
package embedded

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures the embedded server. Zero values take defaults.
type Config struct {
	// StoreDir is where JetStream keeps its files (required).
	StoreDir string
	// Listen is the client address ("host:port"); port 0 or -1 picks a free one. Default
	// "127.0.0.1:-1".
	Listen string
	// SyncInterval is how often JetStream fsyncs; 0 means after every write ("always"), which
	// is what makes an acknowledged write survive a power loss on a single node.
	SyncInterval time.Duration
	// ServerName names the server in logs and cluster metadata (default "identityd-embedded").
	ServerName string
	// StartTimeout bounds the wait for the server to accept connections (default 10s).
	StartTimeout time.Duration
	// Keys are the public keys of the users the server admits (required; LoadOrCreateKeys).
	Keys Keys
}

func (c *Config) fill() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:-1"
	}
	if c.ServerName == "" {
		c.ServerName = "identityd-embedded"
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 10 * time.Second
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.StoreDir == "" {
		return errors.New("embedded nats: StoreDir is required")
	}
	if _, _, err := splitListen(c.Listen); err != nil {
		return fmt.Errorf("embedded nats: listen address %q: %w", c.Listen, err)
	}
	return c.Keys.Validate()
}

// Loopback reports whether the listen address admits connections from this host only.
// Credentials are required either way; a wider address just lets more hosts try them.
func Loopback(listen string) bool {
	host, _, err := splitListen(listen)
	return err == nil && isLoopback(host)
}

func splitListen(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}

// Start runs the server and waits until it accepts clients. Stop it with Shutdown and
// WaitForShutdown.
func Start(cfg Config) (*server.Server, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, port, _ := splitListen(cfg.Listen)
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		Nkeys:      users(cfg.Keys),
	}
	if cfg.SyncInterval <= 0 {
		opts.SyncAlways = true
	} else {
		opts.SyncInterval = cfg.SyncInterval
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(cfg.StartTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready within %s (is %s free?)", cfg.StartTimeout, cfg.Listen)
	}
	return s, nil
}
