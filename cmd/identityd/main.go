// Command identityd serves the identity API: sign-up, sessions, profile and personal API
// tokens, event-sourced on NATS JetStream with read models in PostgreSQL or SQLite.
//
// Run it with no configuration to get an embedded NATS server and an SQLite read model under
// ./data; see `identityd --help` for the settings.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/identityd/identityd/cmd/internal/wiring"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "identityd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg, err := loadConfig(args, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	started := time.Now()
	wcfg := cfg.Config
	wcfg.Logger = logger
	a, err := wiring.Start(ctx, wcfg)
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	srv := a.API().NewServer() // timeouts, header limit, net/http's own refusals in the envelope
	if cfg.DebugAddr != "" {
		dl, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.DebugAddr)
		if err != nil {
			return fmt.Errorf("listen on %s (debug): %w", cfg.DebugAddr, err)
		}
		dbg := &http.Server{Handler: debugMux(a), ReadHeaderTimeout: 5 * time.Second}
		defer func() { _ = dbg.Close() }()
		go func() { _ = dbg.Serve(dl) }()
		logger.Info("profiling endpoints listening", "addr", dl.Addr().String(), "path", "/debug/pprof/")
	}
	logger.Info("identityd listening", "addr", ln.Addr().String(), "startup_ms", time.Since(started).Milliseconds())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// debugMux serves Go's profiles (net/http/pprof) and the credential cache's counters on their
// own listener, never on the API's address: operators look inside a live instance without
// exposing the endpoints to callers.
func debugMux(a *wiring.App) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/identityd/cache", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if a.Cache() == nil {
			_, _ = w.Write([]byte(`{"enabled":false}` + "\n"))
			return
		}
		_ = json.NewEncoder(w).Encode(a.Cache().Stats())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
