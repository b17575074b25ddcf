// Package eventkeys finds the keys identityd's binaries sign and verify events with: identityd
// signs with a key derived from its secret key (or a configured seed, for rotation) and
// publishes the public keys it trusts in a file in its data dir; readers (identityctl, the
// example subscriber) trust the keys they are given or that file.
package eventkeys

import (
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
// service's secret key.
func Signer(secret, seed []byte) (events.SigningKey, error) {
	if len(seed) > 0 {
		return events.NewSigningKey(seed)
	}
	return events.DeriveSigningKey(secret)
}

// ServiceKeyring is what identityd trusts: its own key, the extra keys (those of earlier
// rotations, in text form) and unsigned events through unsignedThrough.
func ServiceKeyring(signer events.SigningKey, extra string, unsignedThrough uint64) (*events.Keyring, error) {
	keys, err := events.ParsePublicKeys(extra)
	if err != nil {
		return nil, err
	}
	return events.NewKeyring(unsignedThrough, append([]events.PublicKey{signer.PublicKey()}, keys...)...), nil
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
// file identityd wrote into dataDir.
func ReaderKeyring(keys, dataDir string, unsignedThrough uint64) (*events.Keyring, error) {
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
	return events.NewKeyring(unsignedThrough, parsed...), nil
}
