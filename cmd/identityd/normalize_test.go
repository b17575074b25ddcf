package main

import (
	"net/http"
	"testing"
)

// TestEmailLookAlikes acts as the attacker of issue 11 over real HTTP: with ops@example.com
// signed up, another spelling of that address lands on it (409 email_taken, and log-in
// reaches that account), while a look-alike (ſ, a Cyrillic letter, an IP literal, an
// invisible character) is refused at sign-up (400 invalid_email) and never logs in.
func TestEmailLookAlikes(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	const password = "correct horse battery"
	opsToken, opsID := signUp(t, in.URL, "ops@example.com", "Ops")
	if got := call(t, in.URL, "GET", "/api/v0/user", opsToken, nil).json(t)["email"]; got != "ops@example.com" {
		t.Fatalf("email = %v", got)
	}
	signUpAs := func(email, name string) response {
		return call(t, in.URL, "POST", "/api/v0/users", "", map[string]string{"email": email, "name": name, "password": password})
	}

	sameAddress := []string{
		"OPS@EXAMPLE.COM",
		"  Ops@Example.Com\t",
		"ops@ＥＸＡＭＰＬＥ.com",      // fullwidth domain, mapped by IDNA
		"ops@example\u3002com", // ideographic full stop
	}
	for _, email := range sameAddress {
		r := signUpAs(email, "Someone Else")
		if r.Status != http.StatusConflict || r.errCode(t) != "email_taken" {
			t.Errorf("sign-up as %q: %d %s; want 409 email_taken", email, r.Status, r.Body)
		}
	}

	lookAlikes := []string{
		"opſ@example.com",             // U+017F: the admin look-alike of the report
		"OPſ@EXAMPLE.COM",             //
		"\u212Aops@example.com",       // Kelvin sign
		"оps@example.com",             // Cyrillic о in the local part
		"ops@exаmple.com",             // Cyrillic а in the domain
		"ops@xn--exmple-4nf.com",      // the same domain as an A-label
		"ops@xn--80ak6aa92e.com",      // аррӏе.com
		"ops@exɑmple.com",             // IPA alpha
		"ops@example.com\u200B",       // zero-width space
		"ops@exa\u00ADmple.com",       // soft hyphen, which IDNA alone would drop
		"\u202Eops@example.com",       // right-to-left override
		"ops@[127.0.0.1]",             // IP literal
		"ops@[IPv6:::1]",              //
		"ops@127.0.0.1",               // bare IP
		"ops@-example.com",            // leading hyphen
		"ops@example-.com",            // trailing hyphen
		"ops@example",                 // one label
		"ops@straße.example",          // IDNA deviation
		"ops@i\u0307nvisible.example", // dot above an i
	}
	for _, email := range lookAlikes {
		r := signUpAs(email, "Mallory")
		if r.Status != http.StatusBadRequest || r.errCode(t) != "invalid_email" {
			t.Errorf("sign-up as %q: %d %s; want 400 invalid_email", email, r.Status, r.Body)
		}
	}

	// Log-in goes through the same canonical form: other spellings reach ops, look-alikes
	// reach nobody.
	for _, email := range sameAddress {
		r := call(t, in.URL, "POST", "/api/v0/sessions", "", map[string]string{"email": email, "password": password})
		mustStatus(t, r, http.StatusCreated)
		u := call(t, in.URL, "GET", "/api/v0/user", r.json(t)["token"].(string), nil).json(t)
		if u["uuid"] != opsID || u["email"] != "ops@example.com" {
			t.Errorf("log-in as %q reached %v; want ops %s", email, u, opsID)
		}
	}
	for _, email := range lookAlikes {
		r := call(t, in.URL, "POST", "/api/v0/sessions", "", map[string]string{"email": email, "password": password})
		if r.Status != http.StatusUnauthorized || r.errCode(t) != "invalid_credentials" {
			t.Errorf("log-in as %q: %d %s; want 401 invalid_credentials", email, r.Status, r.Body)
		}
	}

	// An internationalized domain has one canonical form whichever way it is written.
	r := signUpAs("Kate@BÜCHER.de", "Kate")
	mustStatus(t, r, http.StatusCreated)
	if got := r.json(t)["user"].(map[string]any)["email"]; got != "kate@bücher.de" {
		t.Fatalf("IDN sign-up stored %v, want kate@bücher.de", got)
	}
	for _, email := range []string{"kate@xn--bcher-kva.de", "kate@bu\u0308cher.de"} {
		if r := signUpAs(email, "Kate Again"); r.Status != http.StatusConflict || r.errCode(t) != "email_taken" {
			t.Errorf("sign-up as %q: %d %s; want 409 email_taken", email, r.Status, r.Body)
		}
	}
	mustStatus(t, call(t, in.URL, "POST", "/api/v0/sessions", "", map[string]string{"email": "KATE@xn--bcher-kva.DE", "password": password}), http.StatusCreated)
}

// TestInvisibleCharactersInNames: bidi overrides, zero-width and other invisible characters
// are refused in names (sign-up and rename) and token descriptions with the field's 400,
// and nothing is stored; an emoji sequence and a composed name are kept.
func TestInvisibleCharactersInNames(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	session, _ := signUp(t, in.URL, "grace@example.com", "Grace")
	bad := []string{"\u202Eevil", "ad\u200Ba", "ad\u200Da", "Grace\u2066x\u2069", "\uFEFFGrace", "Gr\u00ADace", "Grace\U000E0041", "\u3164"}
	for _, name := range bad {
		r := call(t, in.URL, "POST", "/api/v0/users", "", map[string]string{"email": "new@example.com", "name": name, "password": "correct horse battery"})
		if r.Status != http.StatusBadRequest || r.errCode(t) != "invalid_name" {
			t.Errorf("sign-up with name %q: %d %s; want 400 invalid_name", name, r.Status, r.Body)
		}
		r = call(t, in.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": name})
		if r.Status != http.StatusBadRequest || r.errCode(t) != "invalid_name" {
			t.Errorf("rename to %q: %d %s; want 400 invalid_name", name, r.Status, r.Body)
		}
		r = call(t, in.URL, "POST", "/api/v0/user/api-tokens", session, map[string]string{"description": name})
		if r.Status != http.StatusBadRequest || r.errCode(t) != "invalid_description" {
			t.Errorf("token described %q: %d %s; want 400 invalid_description", name, r.Status, r.Body)
		}
	}
	if got := call(t, in.URL, "GET", "/api/v0/user", session, nil).json(t)["name"]; got != "Grace" {
		t.Fatalf("name after refused renames: %q", got)
	}
	if n := len(call(t, in.URL, "GET", "/api/v0/user/api-tokens", session, nil).json(t)["api_tokens"].([]any)); n != 0 {
		t.Fatalf("%d tokens stored from refused descriptions", n)
	}
	// The new@example.com address was never claimed.
	signUp(t, in.URL, "new@example.com", "New")

	r := call(t, in.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Gra\u0300ce 👩🏽‍💻"})
	mustStatus(t, r, http.StatusOK)
	if got := r.json(t)["name"]; got != "Gràce 👩🏽‍💻" {
		t.Fatalf("renamed to %q, want the NFC form", got)
	}
}
