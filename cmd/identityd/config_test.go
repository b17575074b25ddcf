package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestConfigDefaults(t *testing.T) {
	c, err := loadConfig(nil, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:8080" || c.DataDir != "./data" || c.NATSURL != "" || c.DatabaseURL != "" ||
		c.NATSListen != "127.0.0.1:14222" || c.PublicURL != "http://127.0.0.1:8080" || c.SessionTTL != 720*time.Hour {
		t.Fatalf("defaults = %+v", c)
	}
}

func TestConfigEnvAndFlags(t *testing.T) {
	env := map[string]string{
		"IDENTITYD_HTTP_ADDR":    "0.0.0.0:9000",
		"IDENTITYD_NATS_URL":     "nats://nats:4222",
		"IDENTITYD_DATABASE_URL": "postgres://u@db/identityd",
		"IDENTITYD_SECRET_KEY":   strings.Repeat("ab", 32),
	}
	c, err := loadConfig([]string{"--http-addr", "127.0.0.1:9999"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:9999" || c.NATSURL != "nats://nats:4222" || c.DatabaseURL != "postgres://u@db/identityd" || len(c.SecretKey) != 32 {
		t.Fatalf("config = %+v", c)
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	env := map[string]string{
		"IDENTITYD_SECRET_KEY":    "short",
		"IDENTITYD_SESSION_TTL":   "forever",
		"IDENTITYD_NATS_REPLICAS": "-1",
		"IDENTITYD_LOG_LEVEL":     "loud",
	}
	_, err := loadConfig(nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for _, name := range []string{"IDENTITYD_SECRET_KEY", "IDENTITYD_SESSION_TTL", "IDENTITYD_NATS_REPLICAS", "IDENTITYD_LOG_LEVEL"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	_, err := loadConfig([]string{"--help"}, func(string) string { return "" }, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, s := range settings {
		if !strings.Contains(out.String(), s.env) || !strings.Contains(out.String(), "-"+s.flag) {
			t.Errorf("--help lacks %s / --%s", s.env, s.flag)
		}
	}
}

// TestHelpNeverPrintsSecrets: values from the environment are not shown as flag defaults.
func TestHelpNeverPrintsSecrets(t *testing.T) {
	secret := strings.Repeat("5e", 32)
	env := map[string]string{"IDENTITYD_SECRET_KEY": secret, "IDENTITYD_DATABASE_URL": "postgres://u:hunter2@db/x"}
	for _, args := range [][]string{{"--help"}, {"--no-such-flag"}} {
		var out bytes.Buffer
		_, _ = loadConfig(args, func(k string) string { return env[k] }, &out)
		if strings.Contains(out.String(), secret) || strings.Contains(out.String(), "hunter2") {
			t.Fatalf("%v printed a secret:\n%s", args, out.String())
		}
	}
	c, err := loadConfig(nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil || len(c.SecretKey) != 32 || c.DatabaseURL != env["IDENTITYD_DATABASE_URL"] {
		t.Fatalf("environment not applied: %+v %v", c, err)
	}
}

// TestPresenceConfigFitsEveryLease: whatever lease is set, the registry's timings validate and
// keep a margin of at least ten leases.
func TestPresenceConfigFitsEveryLease(t *testing.T) {
	for _, lease := range []time.Duration{time.Millisecond, 15 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, time.Second, 10 * time.Second} {
		p := presenceConfig(config{CacheLease: lease}, &nats.Conn{}, 1).WithDefaults()
		if err := p.Validate(); err != nil {
			t.Errorf("lease %s: %v", lease, err)
		}
		if p.Margin < 10*lease {
			t.Errorf("lease %s: margin %s, want at least ten leases", lease, p.Margin)
		}
	}
}
