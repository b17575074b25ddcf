package events

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Event signatures prove an event's origin: only the holder of identityd's signing key can
// write an event that readers accept, even if a client with publish rights on the stream's
// subjects appends one. Each event carries two CloudEvents extension attributes:
//
//	ce-keyid      the signing key's id (KeyID)
//	ce-signature  base64url (no padding) of the Ed25519 signature over SignedBytes
//
// The signature covers the NATS subject the event is stored under, its content hash (every
// chained attribute and the payload) and its chain hash, so moving, altering or re-chaining
// an event breaks it. Replaying an untouched event breaks its aggregate's hash chain instead,
// which verification reports.
//
// A third attribute, ce-mac, is a fast path for identityd's own readers: an HMAC-SHA256 over the
// same bytes under a key derived from the service's secret key, which only identityd's instances
// and its operators hold (they hold the signing key too). Verifying it costs about a
// fiftieth of an Ed25519 verification, which is what lets a rebuild verify every event. A reader
// without the MAC key, or an event whose MAC does not verify, falls back to the signature.
const (
	HeaderKeyID     = "ce-keyid"
	HeaderSignature = "ce-signature"
	HeaderMAC       = "ce-mac"
)

// The HKDF infos that derive the signing and MAC keys from the service's secret key; a new info
// string would be a new key.
const (
	signingKeyInfo = "identityd event signing key v1"
	macKeyInfo     = "identityd event mac key v1"
)

// Errors of signature verification. Each also matches ErrUndecodable: a refused event cannot
// be fixed by retrying.
var (
	// ErrUnsigned: the event carries no signature and is newer than the accepted unsigned history.
	ErrUnsigned = errors.New("event is not signed")
	// ErrUnknownKey: the event is signed with a key that is not trusted.
	ErrUnknownKey = errors.New("event is signed with an unknown key")
	// ErrBadSignature: the signature does not match the event's content.
	ErrBadSignature = errors.New("event signature does not verify")
)

// refusal wraps a verification error so that it matches both ErrUndecodable and its cause.
type refusal struct{ err error }

func (r refusal) Error() string   { return r.err.Error() }
func (r refusal) Unwrap() []error { return []error{ErrUndecodable, r.err} }

// IsRefused reports whether err is a failed signature check (ErrUnsigned, ErrUnknownKey or
// ErrBadSignature), as opposed to a payload that could not be parsed.
func IsRefused(err error) bool {
	return errors.Is(err, ErrUnsigned) || errors.Is(err, ErrUnknownKey) || errors.Is(err, ErrBadSignature)
}

// PublicKey is an event-signing public key. Its text form is "ed25519:" followed by the key in
// base64url without padding.
type PublicKey struct {
	key ed25519.PublicKey
}

// KeyID names a public key in the ce-keyid attribute: the first 8 bytes of its SHA-256, hex.
func (p PublicKey) KeyID() string {
	sum := sha256.Sum256(p.key)
	return hex.EncodeToString(sum[:8])
}

// String is the key's text form, as ParsePublicKey reads it.
func (p PublicKey) String() string {
	return "ed25519:" + base64.RawURLEncoding.EncodeToString(p.key)
}

// MarshalText implements encoding.TextMarshaler.
func (p PublicKey) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// ParsePublicKey reads a key in its text form ("ed25519:<base64url>").
func ParsePublicKey(s string) (PublicKey, error) {
	raw, ok := strings.CutPrefix(strings.TrimSpace(s), "ed25519:")
	if !ok {
		return PublicKey{}, fmt.Errorf("event public key %q: want ed25519:<base64url>", s)
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("event public key %q: not a base64url Ed25519 public key", s)
	}
	return PublicKey{key: ed25519.PublicKey(b)}, nil
}

// ParsePublicKeys reads keys separated by commas, spaces or new lines; blank entries and lines
// starting with # are skipped.
func ParsePublicKeys(s string) ([]PublicKey, error) {
	var out []PublicKey
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\r' }) {
			k, err := ParsePublicKey(f)
			if err != nil {
				return nil, err
			}
			out = append(out, k)
		}
	}
	return out, nil
}

// SigningKey signs events, and MACs them when it has a MAC key (WithMAC). The zero value is
// not usable.
type SigningKey struct {
	priv ed25519.PrivateKey
	pub  PublicKey
	mac  []byte
}

// MACKey is the key of the ce-mac fast path, derived from the service's secret key.
type MACKey []byte

// DeriveMACKey derives the MAC key from the service's secret key (HKDF-SHA256).
func DeriveMACKey(secret []byte) (MACKey, error) {
	if len(secret) < 32 {
		return nil, errors.New("event mac: the secret key must be at least 32 bytes")
	}
	k, err := hkdf.Key(sha256.New, secret, nil, macKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("event mac: %w", err)
	}
	return k, nil
}

// WithMAC returns the key that also writes ce-mac under mac.
func (k SigningKey) WithMAC(mac MACKey) SigningKey {
	k.mac = mac
	return k
}

func (m MACKey) sum(signed []byte) []byte {
	h := hmac.New(sha256.New, m)
	h.Write(signed)
	return h.Sum(nil)
}

// DeriveSigningKey derives the signing key from the service's secret key (HKDF-SHA256), so
// every instance sharing the secret key signs with the same key and nothing more is stored.
func DeriveSigningKey(secret []byte) (SigningKey, error) {
	if len(secret) < 32 {
		return SigningKey{}, errors.New("event signing: the secret key must be at least 32 bytes")
	}
	seed, err := hkdf.Key(sha256.New, secret, nil, signingKeyInfo, ed25519.SeedSize)
	if err != nil {
		return SigningKey{}, fmt.Errorf("event signing: %w", err)
	}
	return NewSigningKey(seed)
}

// NewSigningKey builds a signing key from a 32-byte Ed25519 seed.
func NewSigningKey(seed []byte) (SigningKey, error) {
	if len(seed) != ed25519.SeedSize {
		return SigningKey{}, fmt.Errorf("event signing: the seed must be %d bytes", ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub, ok := priv.Public().(ed25519.PublicKey)
	if !ok {
		return SigningKey{}, errors.New("event signing: not an Ed25519 key")
	}
	return SigningKey{priv: priv, pub: PublicKey{key: pub}}, nil
}

// PublicKey is the key readers verify with.
func (k SigningKey) PublicKey() PublicKey { return k.pub }

// Valid reports whether the key can sign (the zero value cannot).
func (k SigningKey) Valid() bool { return len(k.priv) == ed25519.PrivateKeySize }

// sign returns the ce-keyid, ce-signature and ce-mac ("" without a MAC key) attributes of an
// event.
func (k SigningKey) sign(natsSubject, contentHash, chainHash string) (keyID, sig, mac string) {
	signed := SignedBytes(natsSubject, contentHash, chainHash)
	sig = base64.RawURLEncoding.EncodeToString(ed25519.Sign(k.priv, signed))
	if len(k.mac) > 0 {
		mac = base64.RawURLEncoding.EncodeToString(MACKey(k.mac).sum(signed))
	}
	return k.pub.KeyID(), sig, mac
}

// SignedBytes is what an event's signature covers: a domain-separation label, then the NATS
// subject, the content hash and the chain hash, each as its length (uvarint) and its bytes.
func SignedBytes(natsSubject, contentHash, chainHash string) []byte {
	const label = "identityd.event.v1"
	b := make([]byte, 0, len(label)+len(natsSubject)+len(contentHash)+len(chainHash)+8)
	for _, s := range []string{label, natsSubject, contentHash, chainHash} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// Keyring is the set of public keys whose events a reader accepts, and the stream position up
// to which unsigned events (written before identityd signed its events) are accepted. Several
// keys may be valid at once, which is how the signing key is rotated (README, "Security
// model"). It is safe for concurrent use once built.
type Keyring struct {
	keys            map[string]ed25519.PublicKey
	unsignedThrough uint64
	mac             MACKey
}

// WithMAC returns a keyring that also accepts an event on its ce-mac under mac (the fast path
// of identityd's own readers), falling back to the signature when the MAC does not verify.
func (k *Keyring) WithMAC(mac MACKey) *Keyring {
	c := *k
	c.mac = mac
	return &c
}

// NewKeyring trusts keys, and unsigned events at stream sequences up to unsignedThrough (0:
// none).
func NewKeyring(unsignedThrough uint64, keys ...PublicKey) *Keyring {
	k := &Keyring{keys: make(map[string]ed25519.PublicKey, len(keys)), unsignedThrough: unsignedThrough}
	for _, p := range keys {
		if len(p.key) == ed25519.PublicKeySize {
			k.keys[p.KeyID()] = p.key
		}
	}
	return k
}

// Keys lists the trusted keys.
func (k *Keyring) Keys() []PublicKey {
	out := make([]PublicKey, 0, len(k.keys))
	for _, p := range k.keys {
		out = append(out, PublicKey{key: p})
	}
	return out
}

// UnsignedThrough is the last stream sequence at which an unsigned event is accepted.
func (k *Keyring) UnsignedThrough() uint64 { return k.unsignedThrough }

// verify checks the signature attributes of a message stored under natsSubject at seq.
func (k *Keyring) verify(natsSubject, keyID, sig, mac, contentHash, chainHash string, seq uint64) error {
	// The MAC stands in for checking the signature, not for having one: the event must still
	// name a trusted key and carry a signature, so a key removed from the keyring refuses its
	// events here as it does for a reader without the MAC key.
	if _, trusted := k.keys[keyID]; len(k.mac) > 0 && mac != "" && trusted && sig != "" {
		got, err := base64.RawURLEncoding.DecodeString(mac)
		if err == nil && hmac.Equal(got, k.mac.sum(SignedBytes(natsSubject, contentHash, chainHash))) {
			return nil
		}
	}
	if keyID == "" && sig == "" {
		if seq != 0 && seq <= k.unsignedThrough {
			return nil
		}
		return refusal{fmt.Errorf("%w: seq %d", ErrUnsigned, seq)}
	}
	pub, ok := k.keys[keyID]
	if !ok {
		return refusal{fmt.Errorf("%w: seq %d: key id %q", ErrUnknownKey, seq, keyID)}
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !ed25519.Verify(pub, SignedBytes(natsSubject, contentHash, chainHash), raw) {
		return refusal{fmt.Errorf("%w: seq %d", ErrBadSignature, seq)}
	}
	return nil
}

// Stream metadata that records, signed, the stream position from which every event is signed:
// events before it were written before identityd signed its events. Readers trust it only if
// the signature verifies, so someone who can change the stream's configuration can remove it
// (identityd then refuses to start until it is restored) but not move it.
const (
	MetadataSignedFrom          = "identityd_signed_from"
	MetadataSignedFromSignature = "identityd_signed_from_signature"
)

func signedFromBytes(stream string, from uint64) []byte {
	return SignedBytes(stream, "signed_from", strconv.FormatUint(from, 10))
}

// SignedFrom returns the stream metadata recording that every event of stream from position
// from on is signed.
func (k SigningKey) SignedFrom(stream string, from uint64) map[string]string {
	sig := ed25519.Sign(k.priv, signedFromBytes(stream, from))
	return map[string]string{
		MetadataSignedFrom:          strconv.FormatUint(from, 10),
		MetadataSignedFromSignature: k.pub.KeyID() + ":" + base64.RawURLEncoding.EncodeToString(sig),
	}
}

// SignedFrom reads the position recorded by SigningKey.SignedFrom in a stream's metadata: ok
// only if it is there and signed by a trusted key.
func (k *Keyring) SignedFrom(stream string, md map[string]string) (uint64, bool) {
	from, err := strconv.ParseUint(md[MetadataSignedFrom], 10, 64)
	keyID, sig, found := strings.Cut(md[MetadataSignedFromSignature], ":")
	pub, trusted := k.keys[keyID]
	if err != nil || from == 0 || !found || !trusted {
		return 0, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !ed25519.Verify(pub, signedFromBytes(stream, from), raw) {
		return 0, false
	}
	return from, true
}

// WithUnsignedThrough returns the keyring accepting unsigned events up to seq instead.
func (k *Keyring) WithUnsignedThrough(seq uint64) *Keyring {
	c := *k
	c.unsignedThrough = seq
	return &c
}
