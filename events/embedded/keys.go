package embedded

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// The NATS users. Each authenticates with an nkey: the server holds only the public key and
// checks a signature of a nonce it sends, so no password or secret is ever in a config file or
// on the wire.
const (
	// IdentitydUser is identityd itself: the only user that may publish events.
	IdentitydUser = "identityd"
	// ReaderUser is for downstream subscribers, identityctl and auditors: it reads the event
	// stream and cannot change it.
	ReaderUser = "reader"
)

// Files LoadOrCreateKeys keeps in its directory.
const (
	// IdentitydSeedFile holds identityd's nkey seed (0600).
	IdentitydSeedFile = "identityd.nk"
	// ReaderSeedFile holds the reader's nkey seed (0600): hand it to subscribers.
	ReaderSeedFile = "reader.nk"
	// ServerConfigFile is a nats-server include file with both users' public keys and
	// permissions (WriteServerConfig), for an external server.
	ServerConfigFile = "nats-users.conf"
)

// IdentitydInboxPrefix is the reply-subject prefix of identityd's connections (set it with
// nats.CustomInboxPrefix, ClientOptions does). Only identityd may subscribe below it, so a
// reader cannot watch identityd's replies nor learn an inbox to send forged replies to.
const IdentitydInboxPrefix = "_INBOX_identityd"

// ErrKeyFileMode means a seed file can be read by other users of the host.
var ErrKeyFileMode = errors.New("embedded nats: key file readable by group or others")

// Keys are the public keys of the two users and where their seeds are.
type Keys struct {
	// Dir holds the seed files.
	Dir string
	// Identityd and Reader are the users' public nkeys ("U…").
	Identityd, Reader string
}

// IdentitydSeed is the path of identityd's seed file.
func (k Keys) IdentitydSeed() string { return filepath.Join(k.Dir, IdentitydSeedFile) }

// ReaderSeed is the path of the reader's seed file.
func (k Keys) ReaderSeed() string { return filepath.Join(k.Dir, ReaderSeedFile) }

// Validate reports keys the server cannot use.
func (k Keys) Validate() error {
	if !nkeys.IsValidPublicUserKey(k.Identityd) || !nkeys.IsValidPublicUserKey(k.Reader) {
		return errors.New("embedded nats: Keys need the public user nkeys of identityd and reader (LoadOrCreateKeys)")
	}
	if k.Identityd == k.Reader {
		return errors.New("embedded nats: identityd and reader must have different keys")
	}
	return nil
}

// LoadOrCreateKeys reads the users' seeds from dir, creating dir (0700) and any missing seed
// (0600) on first use, so a restart keeps the keys that subscribers were given. A seed file
// that group or others can read is refused (ErrKeyFileMode).
func LoadOrCreateKeys(dir string) (Keys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Keys{}, fmt.Errorf("embedded nats: key dir: %w", err)
	}
	k := Keys{Dir: dir}
	var err error
	if k.Identityd, err = loadOrCreateSeed(k.IdentitydSeed()); err != nil {
		return Keys{}, err
	}
	if k.Reader, err = loadOrCreateSeed(k.ReaderSeed()); err != nil {
		return Keys{}, err
	}
	return k, k.Validate()
}

// loadOrCreateSeed returns the public key of the user seed in path, writing a new seed first
// when there is none.
func loadOrCreateSeed(path string) (string, error) {
	if st, err := os.Stat(path); err == nil {
		if st.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("%w: %s has mode %#o; chmod 600 it", ErrKeyFileMode, path, st.Mode().Perm())
		}
		return PublicKey(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("embedded nats: %w", err)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", fmt.Errorf("embedded nats: new key: %w", err)
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return "", err
	}
	// O_EXCL: two processes starting on the same data dir never overwrite each other's key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600) //nolint:gosec // path is under the configured key dir
	if errors.Is(err, os.ErrExist) {
		return PublicKey(path)
	}
	if err != nil {
		return "", fmt.Errorf("embedded nats: write key: %w", err)
	}
	_, werr := f.Write(append(seed, '\n'))
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("embedded nats: write key: %w", werr)
	}
	pub, err := kp.PublicKey()
	return pub, err
}

// PublicKey returns the public user key of the nkey seed (or .creds) file at path.
func PublicKey(path string) (string, error) {
	b, err := os.ReadFile(path) //nolint:gosec // a key file the operator named
	if err != nil {
		return "", fmt.Errorf("embedded nats: %w", err)
	}
	defer clear(b)
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return "", fmt.Errorf("embedded nats: %s: not an nkey seed or .creds file: %w", path, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", err
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("embedded nats: %s: not a user key", path)
	}
	return pub, nil
}

// ClientOptions returns the connect options that authenticate with the credentials file at
// path: an nkey seed file (what LoadOrCreateKeys writes) or a .creds file (user JWT and seed,
// for a server with JWT accounts). For identityd's own connections (identityd true) they also
// set IdentitydInboxPrefix, which its permissions require.
func ClientOptions(path string, identityd bool) ([]nats.Option, error) {
	b, err := os.ReadFile(path) //nolint:gosec // a credentials file the operator named
	if err != nil {
		return nil, fmt.Errorf("NATS credentials: %w", err)
	}
	isCreds := bytes.Contains(b, []byte("BEGIN NATS USER JWT"))
	clear(b)
	var opts []nats.Option
	if isCreds {
		opts = append(opts, nats.UserCredentials(path))
	} else {
		o, err := nats.NkeyOptionFromSeed(path)
		if err != nil {
			return nil, fmt.Errorf("NATS credentials %s: %w", path, err)
		}
		opts = append(opts, o)
	}
	if identityd {
		opts = append(opts, nats.CustomInboxPrefix(IdentitydInboxPrefix))
	}
	return opts, nil
}

// isLoopback reports whether host names only this machine.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// KeyDir is where identityd keeps the keys under its data dir: <data dir>/credentials.
func KeyDir(dataDir string) string { return filepath.Join(dataDir, "credentials") }

// DefaultReaderCredentials is the reader's seed file under dataDir when it exists, else "":
// what identityctl and subscribers on the same host use when given no credentials.
func DefaultReaderCredentials(dataDir string) string {
	p := filepath.Join(KeyDir(dataDir), ReaderSeedFile)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
