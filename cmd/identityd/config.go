package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events"
)

// config is everything identityd can be told: the instance's wiring plus the listeners and the
// log level. Each setting is an environment variable with a flag of the same meaning; a flag
// wins over the variable.
type config struct {
	wiring.Config
	HTTPAddr  string
	LogLevel  slog.Level
	DebugAddr string
}

// setting describes one configuration variable for flags, env and --help.
type setting struct {
	env, flag, def, help string
}

var settings = []setting{
	{"IDENTITYD_HTTP_ADDR", "http-addr", "127.0.0.1:8080", "HTTP listen address"},
	{"IDENTITYD_DATA_DIR", "data-dir", "./data", "directory for the embedded NATS store, the SQLite read model and the generated secret key"},
	{"IDENTITYD_NATS_URL", "nats-url", "", "external NATS server URL (nats://host:4222); unset: run an embedded NATS server"},
	{"IDENTITYD_NATS_LISTEN", "nats-listen", "127.0.0.1:14222", "client address of the embedded NATS server, so other programs can subscribe to the stream (with the reader credentials in <data-dir>/credentials); keep it on loopback unless other hosts must read"},
	{"IDENTITYD_NATS_CREDS", "nats-creds", "", "identityd's credentials for the external NATS (IDENTITYD_NATS_URL): nkey seed or .creds file; the embedded server uses the keys it generates in <data-dir>/credentials"},
	{"IDENTITYD_NATS_REPLICAS", "nats-replicas", "0", "replicas of the event stream (3 on a NATS cluster); 0 keeps the existing stream's (1 for a new one)"},
	{"IDENTITYD_DATABASE_URL", "database-url", "", "read-model database: postgres://user@host:5432/db?sslmode=disable; unset: SQLite file in the data dir"},
	{"IDENTITYD_SECRET_KEY", "secret-key", "", "hex key (>= 32 bytes) deriving idempotent ids and secrets; instances sharing users must share it; unset: generated into the data dir"},
	{"IDENTITYD_EVENT_SIGNING_KEY", "event-signing-key", "", "hex Ed25519 seed (32 bytes) events are signed with; unset: derived from the secret key. Set it to rotate the signing key (README, Security model)"},
	{"IDENTITYD_EVENT_PUBLIC_KEYS", "event-public-keys", "", "comma-separated further public keys (ed25519:...) whose events are accepted: the keys of earlier rotations"},
	{"IDENTITYD_EVENTS_UNSIGNED_THROUGH", "events-unsigned-through", "0", "last stream sequence at which unsigned events, written before identityd signed its events, are accepted; 0: none"},
	{"IDENTITYD_PUBLIC_URL", "public-url", "", "externally visible base URL, used in error doc_url links; unset: http://<http-addr>"},
	{"IDENTITYD_LOG_LEVEL", "log-level", "info", "log level: debug, info, warn, error"},
	{"IDENTITYD_SESSION_TTL", "session-ttl", "720h", "lifetime of a log-in session"},
	{"IDENTITYD_ARGON2_MEMORY_KIB", "argon2-memory-kib", "19456", "argon2id memory cost of new password hashes, KiB"},
	{"IDENTITYD_ARGON2_TIME", "argon2-time", "2", "argon2id passes of new password hashes"},
	{"IDENTITYD_CONSISTENCY_TIMEOUT", "consistency-timeout", "5s", "how long a write waits for the read model before answering (read-your-writes)"},
	{"IDENTITYD_AUTH_CACHE_LEASE", "auth-cache-lease", "15ms", "credentials are answered from memory while this instance confirmed, within this long, that it has every event; writes that change a profile or revoke wait this long. Instances sharing a stream must use the same value; 0 turns the cache off"},
	{"IDENTITYD_AUTH_CACHE_ENTRIES", "auth-cache-entries", "100000", "credentials kept in memory at most"},
	{"IDENTITYD_BOOTSTRAP_ADMIN", "bootstrap-admin", "", "the first administrator: a user id (preferred) or the e-mail of an existing account, granted admin rights by an event at start-up, once in the life of the stream (only while no administrator was ever granted); afterwards administrators grant and revoke rights over the API"},
	{"IDENTITYD_DEBUG_ADDR", "debug-addr", "", "address of the profiling endpoints (/debug/pprof/), e.g. 127.0.0.1:6060; unset: off. Never expose it publicly"},
	{"IDENTITYD_TRUSTED_PROXIES", "trusted-proxies", "", "comma-separated proxy addresses/CIDRs whose X-Forwarded-For gives the client IP recorded in events; unset: none"},
}

// loadConfig reads flags over environment variables over defaults.
func loadConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("identityd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// Flags show only the built-in defaults: environment values (secrets among them) are applied
	// after parsing, so --help and flag errors never print them.
	vals := map[string]*string{}
	for _, s := range settings {
		vals[s.env] = fs.String(s.flag, s.def, fmt.Sprintf("%s (env %s)", s.help, s.env))
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "identityd: an event-sourced identity service (users, sessions, API tokens)\n\n"+
			"Usage: identityd [flags]\n\nWith nothing set it runs on embedded defaults: an in-process NATS JetStream\n"+
			"server and an SQLite read model, both under the data dir.\n\nFlags (each also an environment variable):\n")
		fs.PrintDefaults()
	}
	if err := refuseAdminEmails(args, getenv); err != nil {
		return config{}, err
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, s := range settings {
		if v := getenv(s.env); v != "" && !given[s.flag] {
			*vals[s.env] = v
		}
	}
	get := func(env string) string { return strings.TrimSpace(*vals[env]) }
	c := config{HTTPAddr: get("IDENTITYD_HTTP_ADDR"), Config: wiring.Config{
		DataDir:     get("IDENTITYD_DATA_DIR"),
		NATSURL:     get("IDENTITYD_NATS_URL"),
		NATSListen:  get("IDENTITYD_NATS_LISTEN"),
		NATSCreds:   get("IDENTITYD_NATS_CREDS"),
		DatabaseURL: get("IDENTITYD_DATABASE_URL"),
		PublicURL:   strings.TrimRight(get("IDENTITYD_PUBLIC_URL"), "/"),
	}}
	var errs []error
	var err error
	if c.NATSReplicas, err = strconv.Atoi(get("IDENTITYD_NATS_REPLICAS")); err != nil || c.NATSReplicas < 0 || c.NATSReplicas > 5 {
		errs = append(errs, errors.New("IDENTITYD_NATS_REPLICAS must be an integer from 0 (keep the stream's) to 5"))
	}
	if k := get("IDENTITYD_SECRET_KEY"); k != "" {
		if c.SecretKey, err = hex.DecodeString(k); err != nil || len(c.SecretKey) < 32 {
			errs = append(errs, errors.New("IDENTITYD_SECRET_KEY must be at least 32 bytes, hex encoded"))
		}
	}
	if k := get("IDENTITYD_EVENT_SIGNING_KEY"); k != "" {
		if c.EventSigningSeed, err = hex.DecodeString(k); err != nil || len(c.EventSigningSeed) != 32 {
			errs = append(errs, errors.New("IDENTITYD_EVENT_SIGNING_KEY must be 32 bytes, hex encoded"))
		}
	}
	c.EventPublicKeys = get("IDENTITYD_EVENT_PUBLIC_KEYS")
	if _, err := events.ParsePublicKeys(c.EventPublicKeys); err != nil {
		errs = append(errs, fmt.Errorf("IDENTITYD_EVENT_PUBLIC_KEYS: %w", err))
	}
	if c.UnsignedThrough, err = strconv.ParseUint(get("IDENTITYD_EVENTS_UNSIGNED_THROUGH"), 10, 64); err != nil {
		errs = append(errs, errors.New("IDENTITYD_EVENTS_UNSIGNED_THROUGH must be a stream sequence (an integer >= 0)"))
	}
	if err := c.LogLevel.UnmarshalText([]byte(get("IDENTITYD_LOG_LEVEL"))); err != nil {
		errs = append(errs, fmt.Errorf("IDENTITYD_LOG_LEVEL: %w", err))
	}
	if c.SessionTTL, err = time.ParseDuration(get("IDENTITYD_SESSION_TTL")); err != nil || c.SessionTTL <= 0 {
		errs = append(errs, errors.New("IDENTITYD_SESSION_TTL must be a positive duration such as 720h"))
	}
	if c.ConsistencyMax, err = time.ParseDuration(get("IDENTITYD_CONSISTENCY_TIMEOUT")); err != nil || c.ConsistencyMax <= 0 {
		errs = append(errs, errors.New("IDENTITYD_CONSISTENCY_TIMEOUT must be a positive duration such as 5s"))
	}
	if c.CacheLease, err = time.ParseDuration(get("IDENTITYD_AUTH_CACHE_LEASE")); err != nil || c.CacheLease < 0 || c.CacheLease > time.Second {
		errs = append(errs, errors.New("IDENTITYD_AUTH_CACHE_LEASE must be a duration from 0 (no cache) to 1s, such as 15ms"))
	}
	if c.CacheEntries, err = strconv.Atoi(get("IDENTITYD_AUTH_CACHE_ENTRIES")); err != nil || c.CacheEntries < 1 {
		errs = append(errs, errors.New("IDENTITYD_AUTH_CACHE_ENTRIES must be a positive integer"))
	}
	mem, err := strconv.ParseUint(get("IDENTITYD_ARGON2_MEMORY_KIB"), 10, 32)
	if err != nil || mem < 8 {
		errs = append(errs, errors.New("IDENTITYD_ARGON2_MEMORY_KIB must be an integer >= 8"))
	}
	passes, err := strconv.ParseUint(get("IDENTITYD_ARGON2_TIME"), 10, 32)
	if err != nil || passes < 1 {
		errs = append(errs, errors.New("IDENTITYD_ARGON2_TIME must be an integer >= 1"))
	}
	c.Argon2MemKiB, c.Argon2Time = uint32(mem), uint32(passes)
	if c.NATSCreds != "" && c.NATSURL == "" {
		errs = append(errs, errors.New("IDENTITYD_NATS_CREDS is for an external NATS (IDENTITYD_NATS_URL); the embedded server uses the keys in <data-dir>/credentials"))
	}
	if c.HTTPAddr == "" || c.DataDir == "" {
		errs = append(errs, errors.New("IDENTITYD_HTTP_ADDR and IDENTITYD_DATA_DIR must not be empty"))
	}
	if c.BootstrapAdmin = get("IDENTITYD_BOOTSTRAP_ADMIN"); c.BootstrapAdmin != "" {
		if _, err := wiring.ParseBootstrapAdmin(c.BootstrapAdmin); err != nil {
			errs = append(errs, fmt.Errorf("IDENTITYD_BOOTSTRAP_ADMIN: %w", err))
		}
	}
	c.TrustedProxies = splitList(get("IDENTITYD_TRUSTED_PROXIES"))
	c.DebugAddr = get("IDENTITYD_DEBUG_ADDR")
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.HTTPAddr
	}
	return c, errors.Join(errs...)
}

// errAdminEmails refuses the setting that granted admin rights by e-mail text.
var errAdminEmails = errors.New("IDENTITYD_ADMIN_EMAILS (--admin-emails) is no longer supported: admin rights " +
	"belonged to whoever registered a listed address (even a look-alike one). Admin rights now belong to a user id: " +
	"set IDENTITYD_BOOTSTRAP_ADMIN (--bootstrap-admin) to the first administrator's user id (or its account's e-mail, " +
	"resolved once at start-up), then grant others with PUT /api/v0/admin/users/{user_id}/admin")

// refuseAdminEmails fails the start when the removed IDENTITYD_ADMIN_EMAILS is still set, so an
// operator learns that rights moved to user ids instead of silently running without admins.
func refuseAdminEmails(args []string, getenv func(string) string) error {
	if getenv("IDENTITYD_ADMIN_EMAILS") != "" {
		return errAdminEmails
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "admin-emails" {
			return errAdminEmails
		}
	}
	return nil
}

// splitList splits a comma-separated setting, dropping blanks.
func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
