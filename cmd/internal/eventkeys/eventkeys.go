// Package eventkeys finds the keys identityd's binaries sign and verify events with: identityd
// signs with a key derived from its secret key (or a configured seed, for rotation) and
// publishes the public keys it trusts in a file in its data dir; readers (identityctl, the
// example subscriber) trust the keys they are given or that file.
package eventkeys

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/identityd/identityd/events"
)

// FileName is the public-key file identityd writes into its data dir: one key per line, the
// signing key first.
const FileName = "event-keys.pub"

// Signer is identityd's signing key: from seed when set (32 bytes), else derived from the
// service's secret key; it also writes the ce-mac fast path under the MAC key derived from the
// secret key.
func Signer(secret, seed []byte) (events.SigningKey, error) {
	mac, err := events.DeriveMACKey(secret)
	if err != nil {
		return events.SigningKey{}, err
	}
	var k events.SigningKey
	if len(seed) > 0 {
		k, err = events.NewSigningKey(seed)
	} else {
		k, err = events.DeriveSigningKey(secret)
	}
	return k.WithMAC(mac), err
}

// ServiceKeyring is what identityd trusts: its own key, the extra keys (those of earlier
// rotations, in text form), unsigned events through unsignedThrough, and the MAC fast path
// under the key derived from secret.
func ServiceKeyring(secret []byte, signer events.SigningKey, extra string, unsignedThrough uint64) (*events.Keyring, error) {
	keys, err := events.ParsePublicKeys(extra)
	if err != nil {
		return nil, err
	}
	mac, err := events.DeriveMACKey(secret)
	if err != nil {
		return nil, err
	}
	return events.NewKeyring(unsignedThrough, append([]events.PublicKey{signer.PublicKey()}, keys...)...).WithMAC(mac), nil
}

// WriteFile publishes the keyring's keys (signing key first) into dir, readable by all: they are
// public.
func WriteFile(dir string, signer events.SigningKey, ring *events.Keyring) error {
	var b strings.Builder
	b.WriteString("# identityd event-signing public keys (README, Security model); the first one signs new events\n")
	b.WriteString(signer.PublicKey().String() + "\n")
	for _, k := range ring.Keys() {
		if k.KeyID() != signer.PublicKey().KeyID() {
			b.WriteString(k.String() + "\n")
		}
	}
	path := filepath.Join(dir, FileName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil { //nolint:gosec // public keys, meant to be read
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// ReaderKeyring is what a reader trusts: the keys given in text form, or else those of the
// file identityd wrote into dataDir. A reader given identityd's secret key (an operator's
// identityctl) also takes the MAC fast path; secret may be nil.
func ReaderKeyring(keys, dataDir string, unsignedThrough uint64, secret []byte) (*events.Keyring, error) {
	src := "IDENTITYD_EVENT_PUBLIC_KEYS"
	if strings.TrimSpace(keys) == "" {
		path := filepath.Join(dataDir, FileName)
		b, err := os.ReadFile(path) //nolint:gosec // the configured data dir
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no event public keys: set IDENTITYD_EVENT_PUBLIC_KEYS (GET /api/v0/event-keys on identityd lists them) or IDENTITYD_DATA_DIR to identityd's data dir (%s is missing)", path)
		}
		if err != nil {
			return nil, err
		}
		keys, src = string(b), path
	}
	parsed, err := events.ParsePublicKeys(keys)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if len(parsed) == 0 {
		return nil, fmt.Errorf("%s: no keys", src)
	}
	ring := events.NewKeyring(unsignedThrough, parsed...)
	if len(secret) > 0 {
		mac, err := events.DeriveMACKey(secret)
		if err != nil {
			return nil, err
		}
		ring = ring.WithMAC(mac)
	}
	return ring, nil
}

// SecretFileName is the file in the data dir that holds a generated secret key (hex).
const SecretFileName = "secret.key"

// ReadSecret is the service's secret key for a reader: hexKey when set, else the data dir's
// secret key file if there is one and it can be read; nil when neither is available.
func ReadSecret(hexKey, dataDir string) ([]byte, error) {
	src := "IDENTITYD_SECRET_KEY"
	if hexKey == "" {
		b, err := os.ReadFile(filepath.Join(dataDir, SecretFileName)) //nolint:gosec // the configured data dir
		if err != nil {
			return nil, nil //nolint:nilerr // no secret at hand: the reader verifies signatures only
		}
		hexKey, src = strings.TrimSpace(string(b)), filepath.Join(dataDir, SecretFileName)
	}
	key, err := hex.DecodeString(strings.TrimSpace(hexKey))
	if err != nil || len(key) < 32 {
		return nil, fmt.Errorf("%s: not a hex key of at least 32 bytes", src)
	}
	return key, nil
}
