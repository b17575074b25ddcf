package events

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

var (
	testKey, _  = NewSigningKey(bytes.Repeat([]byte{7}, 32))
	testKeyring = NewKeyring(0, testKey.PublicKey())
	// legacyKeyring accepts the unsigned events recorded before identityd signed its events.
	legacyKeyring = NewKeyring(math.MaxUint64)
)

func signed(t *testing.T) *nats.Msg {
	t.Helper()
	m, _, err := Encode(testKey, "id-1", fixAt, Metadata{Actor: "system"}, "", Renamed(fixUser, "A", "B"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func copyMsg(m *nats.Msg) *nats.Msg {
	c := nats.NewMsg(m.Subject)
	c.Data = append([]byte(nil), m.Data...)
	for k, v := range m.Header {
		c.Header[k] = append([]string(nil), v...)
	}
	return c
}

// TestSignatureRefusesForgeries: a reader accepts what the signing key wrote and refuses every
// change an attacker with publish rights but without the key could make.
func TestSignatureRefusesForgeries(t *testing.T) {
	good := signed(t)
	if env, err := testKeyring.Decode(good.Subject, good.Header, good.Data, 5); err != nil || env.KeyID != testKey.PublicKey().KeyID() || env.Refusal != nil {
		t.Fatalf("a signed event: %+v, %v", env, err)
	}
	other, _ := NewSigningKey(bytes.Repeat([]byte{8}, 32))
	forgedByOther, _, err := Encode(other, "id-1", fixAt, Metadata{Actor: "system"}, "", Renamed(fixUser, "A", "B"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		msg     *nats.Msg
		subject string
		want    error
	}{
		"payload changed": {msg: func() *nats.Msg {
			m := copyMsg(good)
			m.Data = bytes.ReplaceAll(m.Data, []byte(`"B"`), []byte(`"M"`))
			return m
		}(), want: ErrBadSignature},
		"actor changed": {msg: func() *nats.Msg { m := copyMsg(good); m.Header.Set(HeaderActor, "user:x"); return m }(), want: ErrBadSignature},
		"chain hash changed": {msg: func() *nats.Msg {
			m := copyMsg(good)
			m.Header.Set(HeaderChainHash, strings.Repeat("ab", 32))
			return m
		}(), want: ErrBadSignature},
		"moved to another subject": {msg: good, subject: "identity.user.0194f3a2-5b1c-7d2e-8f00-000000000000.renamed", want: ErrBadSignature},
		"signature stripped": {msg: func() *nats.Msg {
			m := copyMsg(good)
			m.Header.Del(HeaderSignature)
			m.Header.Del(HeaderKeyID)
			return m
		}(), want: ErrUnsigned},
		"signature garbled":     {msg: func() *nats.Msg { m := copyMsg(good); m.Header.Set(HeaderSignature, "!!"); return m }(), want: ErrBadSignature},
		"signed by another key": {msg: forgedByOther, want: ErrUnknownKey},
		"other key, our key id": {msg: func() *nats.Msg {
			m := copyMsg(forgedByOther)
			m.Header.Set(HeaderKeyID, testKey.PublicKey().KeyID())
			return m
		}(), want: ErrBadSignature},
	}
	for name, c := range cases {
		subject := c.subject
		if subject == "" {
			subject = c.msg.Subject
		}
		env, err := testKeyring.Decode(subject, c.msg.Header, c.msg.Data, 9)
		if !errors.Is(err, c.want) || !errors.Is(err, ErrUndecodable) || !IsRefused(err) {
			t.Errorf("%s: err %v, want %v", name, err, c.want)
			continue
		}
		if env.Sequence != 9 || env.NATSSubj != subject || env.Data != nil || !errors.Is(env.Refusal, c.want) {
			t.Errorf("%s: stub %+v", name, env)
		}
	}
}

// TestKeyRotation: a keyring trusts several keys at once, so events signed before and after a
// rotation both verify; unsigned events only up to the configured position.
func TestKeyRotation(t *testing.T) {
	next, _ := NewSigningKey(bytes.Repeat([]byte{9}, 32))
	ring := NewKeyring(3, testKey.PublicKey(), next.PublicKey())
	for _, k := range []SigningKey{testKey, next} {
		m, _, err := Encode(k, "id", fixAt, Metadata{}, "", UserDeleted{UserID: fixUser})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ring.Decode(m.Subject, m.Header, m.Data, 10); err != nil {
			t.Fatalf("key %s: %v", k.PublicKey().KeyID(), err)
		}
	}
	unsigned := copyMsg(signed(t))
	unsigned.Header.Del(HeaderSignature)
	unsigned.Header.Del(HeaderKeyID)
	if _, err := ring.Decode(unsigned.Subject, unsigned.Header, unsigned.Data, 3); err != nil {
		t.Fatalf("unsigned legacy event at 3: %v", err)
	}
	if _, err := ring.Decode(unsigned.Subject, unsigned.Header, unsigned.Data, 4); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned event at 4: %v", err)
	}
}

func TestPublicKeyText(t *testing.T) {
	pk := testKey.PublicKey()
	keys, err := ParsePublicKeys("# rotation\n" + pk.String() + ", " + pk.String() + "\n\n")
	if err != nil || len(keys) != 2 || keys[0].KeyID() != pk.KeyID() {
		t.Fatalf("%v %v", keys, err)
	}
	for _, bad := range []string{"", "ed25519:", "rsa:abc", "ed25519:" + strings.Repeat("A", 42)} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	a, _ := DeriveSigningKey(bytes.Repeat([]byte{1}, 32))
	b, _ := DeriveSigningKey(bytes.Repeat([]byte{1}, 32))
	c, _ := DeriveSigningKey(bytes.Repeat([]byte{2}, 32))
	if a.PublicKey().String() != b.PublicKey().String() || a.PublicKey().String() == c.PublicKey().String() {
		t.Fatal("derivation is not a function of the secret")
	}
	if _, err := DeriveSigningKey([]byte("short")); err == nil {
		t.Fatal("short secret accepted")
	}
}

func FuzzParsePublicKey(f *testing.F) {
	f.Add(testKey.PublicKey().String())
	f.Add("ed25519:")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParsePublicKey(s)
		if err != nil {
			return
		}
		again, err := ParsePublicKey(k.String())
		if err != nil || again.KeyID() != k.KeyID() {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}

// TestMACFastPath: identityd's own readers accept an event on its MAC; a reader without the
// MAC key, or an event whose MAC fails, falls back to the signature, so the MAC never lets
// through what the signature would refuse, and a garbled MAC never refuses a genuine event.
func TestMACFastPath(t *testing.T) {
	mac := MACKey(bytes.Repeat([]byte{3}, 32))
	key := testKey.WithMAC(mac)
	withMAC := testKeyring.WithMAC(mac)
	m, _, err := Encode(key, "id-1", fixAt, Metadata{Actor: "system"}, "", Renamed(fixUser, "A", "B"))
	if err != nil || m.Header.Get(HeaderMAC) == "" {
		t.Fatalf("no ce-mac: %v", err)
	}
	for name, ring := range map[string]*Keyring{"mac": withMAC, "signature only": testKeyring} {
		if _, err := ring.Decode(m.Subject, m.Header, m.Data, 1); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// The MAC never accepts what a signature-only reader refuses: an event without a signature,
	// or one whose key was removed from the keyring ...
	macOnly := copyMsg(m)
	macOnly.Header.Del(HeaderSignature)
	macOnly.Header.Del(HeaderKeyID)
	for name, ring := range map[string]*Keyring{"mac": withMAC, "signature only": testKeyring} {
		if _, err := ring.Decode(macOnly.Subject, macOnly.Header, macOnly.Data, 1); !errors.Is(err, ErrUnsigned) {
			t.Fatalf("MAC only, %s reader: %v", name, err)
		}
	}
	next, _ := NewSigningKey(bytes.Repeat([]byte{9}, 32))
	rotated := NewKeyring(0, next.PublicKey()).WithMAC(mac)
	if _, err := rotated.Decode(m.Subject, m.Header, m.Data, 1); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("valid MAC, key removed from the keyring: %v", err)
	}
	// ... a garbled MAC falls back to the valid signature ...
	garbled := copyMsg(m)
	garbled.Header.Set(HeaderMAC, "AAAA")
	if _, err := withMAC.Decode(garbled.Subject, garbled.Header, garbled.Data, 1); err != nil {
		t.Fatalf("garbled MAC, valid signature: %v", err)
	}
	// ... and altered content fails both.
	altered := copyMsg(m)
	altered.Data = bytes.ReplaceAll(altered.Data, []byte(`"B"`), []byte(`"M"`))
	if _, err := withMAC.Decode(altered.Subject, altered.Header, altered.Data, 1); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("altered: %v", err)
	}
	// A MAC under another key (an attacker's guess) does not count.
	other, _, err := Encode(testKey.WithMAC(MACKey(bytes.Repeat([]byte{4}, 32))), "id-1", fixAt, Metadata{}, "", Renamed(fixUser, "A", "B"))
	if err != nil {
		t.Fatal(err)
	}
	other.Header.Del(HeaderSignature)
	if _, err := withMAC.Decode(other.Subject, other.Header, other.Data, 1); err == nil {
		t.Fatal("a MAC under another key was accepted")
	}
}

func BenchmarkVerify(b *testing.B) {
	mac := MACKey(bytes.Repeat([]byte{3}, 32))
	m, _, err := Encode(testKey.WithMAC(mac), "id-1", fixAt, Metadata{Actor: "system"}, "", Renamed(fixUser, "A", "B"))
	if err != nil {
		b.Fatal(err)
	}
	for name, ring := range map[string]*Keyring{"mac": testKeyring.WithMAC(mac), "signature": testKeyring} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := ring.Decode(m.Subject, m.Header, m.Data, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSignedFrom: the stream's record of where signing began is trusted only with a valid
// signature by a trusted key, for that stream and that position.
func TestSignedFrom(t *testing.T) {
	md := testKey.SignedFrom("IDENTITY", 42)
	if from, ok := testKeyring.SignedFrom("IDENTITY", md); !ok || from != 42 {
		t.Fatalf("%d %v", from, ok)
	}
	moved := map[string]string{MetadataSignedFrom: "1000", MetadataSignedFromSignature: md[MetadataSignedFromSignature]}
	other, _ := NewSigningKey(bytes.Repeat([]byte{8}, 32))
	for name, c := range map[string]struct {
		stream string
		md     map[string]string
	}{
		"moved":         {"IDENTITY", moved},
		"other stream":  {"OTHER", md},
		"untrusted key": {"IDENTITY", other.SignedFrom("IDENTITY", 42)},
		"missing":       {"IDENTITY", map[string]string{}},
		"no signature":  {"IDENTITY", map[string]string{MetadataSignedFrom: "42"}},
		"garbage":       {"IDENTITY", map[string]string{MetadataSignedFrom: "x", MetadataSignedFromSignature: "a:b"}},
	} {
		if _, ok := testKeyring.SignedFrom(c.stream, c.md); ok {
			t.Errorf("%s: trusted", name)
		}
	}
}
