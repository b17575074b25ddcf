package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/cmd/internal/wiring"
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

// TestConfigBootstrapAdmin: the first administrator is a user id or an e-mail; the removed
// IDENTITYD_ADMIN_EMAILS stops the start with a message that names its replacement, whether it
// comes from the environment or a flag.
func TestConfigBootstrapAdmin(t *testing.T) {
	for v, want := range map[string]wiring.BootstrapTarget{
		"0194f3a2-7c1e-7b3a-9d2e-5f6a7b8c9d0e": {ID: uuid.MustParse("0194f3a2-7c1e-7b3a-9d2e-5f6a7b8c9d0e")},
		" Ops@Example.com ":                    {Email: "ops@example.com"},
	} {
		c, err := loadConfig([]string{"--bootstrap-admin", v}, func(string) string { return "" }, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if got, err := wiring.ParseBootstrapAdmin(c.BootstrapAdmin); err != nil || got != want {
			t.Errorf("%q = %+v, %v; want %+v", v, got, err, want)
		}
	}
	for _, bad := range []string{"ops", "0194f3a2", "not an@address@x"} {
		_, err := loadConfig(nil, func(k string) string { return map[string]string{"IDENTITYD_BOOTSTRAP_ADMIN": bad}[k] }, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "IDENTITYD_BOOTSTRAP_ADMIN") {
			t.Errorf("%q: %v, want a refusal naming IDENTITYD_BOOTSTRAP_ADMIN", bad, err)
		}
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{nil, map[string]string{"IDENTITYD_ADMIN_EMAILS": "ops@example.com"}},
		{[]string{"--admin-emails", "ops@example.com"}, nil},
		{[]string{"-admin-emails=ops@example.com"}, nil},
	} {
		_, err := loadConfig(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
		if !errors.Is(err, errAdminEmails) || !strings.Contains(err.Error(), "IDENTITYD_BOOTSTRAP_ADMIN") {
			t.Errorf("%v %v: %v, want the admin-emails refusal", tc.args, tc.env, err)
		}
	}
}
