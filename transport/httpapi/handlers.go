package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections"
)

// Wire types. Field names follow the Harmont User API.

type userJSON struct {
	Email           string    `json:"email"`
	Name            string    `json:"name"`
	PersonalOrgSlug string    `json:"personal_org_slug"`
	UUID            uuid.UUID `json:"uuid"`
}

type sessionJSON struct {
	ID         uuid.UUID  `json:"id"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

type apiTokenJSON struct {
	ID          uuid.UUID  `json:"id"`
	Description string     `json:"description"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	LastUsedAt  *time.Time `json:"last_used_at"`
}

func userOf(v domain.UserView) userJSON {
	return userJSON{Email: v.Email, Name: v.Name, PersonalOrgSlug: v.PersonalOrgSlug, UUID: v.ID}
}

func sessionOf(v domain.SessionView) sessionJSON {
	return sessionJSON{ID: v.ID, CreatedAt: v.CreatedAt.UTC(), ExpiresAt: v.ExpiresAt.UTC()}
}

// settleFor waits, before a write answers, as long as the write's effect on credentials
// requires (domain.Result.Effect, derived from the events the command emitted): it is the one
// place that chooses the wait, so no handler can pick a weaker one than its write needs.
//
//   - no effect, or a new credential (sign-up, log-in, a new token): the read model includes
//     the write (settle); no cached credential can be stale.
//   - a profile change or wider rights (rename, admin granted): also the credential cache's
//     lease on every instance (settleChange), so none answers from the state before the write.
//   - narrower rights (revoke, log out, delete, admin revoked): as for a change, and until the
//     write is in effect everywhere the caller gets 503 instead of a premature success
//     (settleRevocation).
//
// It reports whether the handler may answer; when it does not, it has answered the request.
func (a *API) settleFor(c *gin.Context, res domain.Result) bool {
	switch res.Effect {
	case events.EffectNone, events.EffectAddsCredential:
		a.settle(c, res.Seq)
		return true
	case events.EffectProfileOnly, events.EffectWidensRights:
		a.settleChange(c, res.Seq)
		return true
	default:
		return a.settleRevocation(c, res.Seq)
	}
}

// settle waits until the read model includes seq, so the caller's next request (here or on
// another instance) sees this write. If the read model lags beyond the timeout the write still
// stands (it is in the stream); the answer says so in a header, and settle reports false.
func (a *API) settle(c *gin.Context, seq uint64) bool {
	if seq == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), a.cfg.ConsistencyTimeout)
	defer cancel()
	if err := a.cfg.Barrier.WaitFor(ctx, seq); err != nil {
		a.cfg.Logger.Warn("read model lagging behind a write", "seq", seq, "request_id", requestID(c), "err", err)
		c.Header("Identityd-Read-Model", "lagging")
		return false
	}
	return true
}

// settleChange is settle for writes that change what an instance may hold in memory (a
// profile, a credential): once the read model has the write, it also waits out the credential
// cache's lease (Fence), so no instance answers from the state before the write. Writes that
// only create (sign-up, log-in, a new token) need not wait.
func (a *API) settleChange(c *gin.Context, seq uint64) bool {
	acked := time.Now() // the command returned: its append is acknowledged
	if !a.settle(c, seq) {
		return false
	}
	if seq == 0 || a.cfg.Fence == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), a.cfg.ConsistencyTimeout)
	defer cancel()
	if err := a.cfg.Fence.Fence(ctx, seq, acked); err != nil {
		c.Header("Identityd-Read-Model", "lagging")
		return false
	}
	return true
}

// settleRevocation is settleChange for writes that take credentials away (revoke, log out,
// delete): until every instance has them, the credentials would still authenticate, so the
// caller gets 503 and retries (the retry changes nothing and waits again) instead of a
// premature success.
func (a *API) settleRevocation(c *gin.Context, seq uint64) bool {
	if a.settleChange(c, seq) {
		return true
	}
	a.abort(c, fail("service_unavailable", "the change is recorded but not yet in effect everywhere; retry the request"))
	return false
}

type signUpRequest struct {
	Email    *string `json:"email"`
	Name     *string `json:"name"`
	Password *string `json:"password"`
}

func (a *API) signUp(c *gin.Context) {
	var req signUpRequest
	if err := decodeJSON(c, &req, false); err != nil {
		a.abort(c, err)
		return
	}
	for f, v := range map[string]*string{"email": req.Email, "name": req.Name, "password": req.Password} {
		if err := required(f, v); err != nil {
			a.abort(c, err)
			return
		}
	}
	key, err := idempotencyKey(c)
	if err != nil {
		a.abort(c, err)
		return
	}
	out, err := a.cfg.Service.SignUp(c.Request.Context(), a.meta(c), domain.SignUp{Email: *req.Email, Name: *req.Name, Password: *req.Password, IdempotencyKey: key})
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, out.Result) {
		return
	}
	c.JSON(http.StatusCreated, gin.H{"user": userOf(out.User), "session": sessionOf(out.Session), "token": out.Token})
}

type logInRequest struct {
	Email    *string `json:"email"`
	Password *string `json:"password"`
}

func (a *API) logIn(c *gin.Context) {
	var req logInRequest
	if err := decodeJSON(c, &req, false); err != nil {
		a.abort(c, err)
		return
	}
	if err := required("email", req.Email); err != nil {
		a.abort(c, err)
		return
	}
	if err := required("password", req.Password); err != nil {
		a.abort(c, err)
		return
	}
	key, err := idempotencyKey(c)
	if err != nil {
		a.abort(c, err)
		return
	}
	out, err := a.cfg.Service.LogIn(c.Request.Context(), a.meta(c), domain.LogIn{Email: *req.Email, Password: *req.Password, IdempotencyKey: key})
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, out.Result) {
		return
	}
	c.JSON(http.StatusCreated, gin.H{"session": sessionOf(out.Session), "token": out.Token})
}

func (a *API) logOut(c *gin.Context) {
	p := caller(c)
	if p.kind != domain.SessionToken {
		a.abort(c, fail("session_token_required", "log out with the session token; revoke API tokens instead"))
		return
	}
	res, err := a.cfg.Service.EndSession(c.Request.Context(), a.meta(c), p.user.ID, p.tokenID)
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, res) {
		return
	}
	c.Status(http.StatusNoContent)
}

func (a *API) getUser(c *gin.Context) {
	p := caller(c)
	u := p.user
	if p.profileStale { // a rename arrived since the credential was cached: read the profile
		var err error
		u, err = a.cfg.Credentials.User(c.Request.Context(), p.user.ID)
		switch {
		case errors.Is(err, projections.ErrNotFound): // deleted since it authenticated
			a.abort(c, domain.ErrUserNotFound)
			return
		case err != nil:
			a.abort(c, unavailableError{err})
			return
		}
	}
	c.JSON(http.StatusOK, userJSON{Email: u.Email, Name: u.Name, PersonalOrgSlug: u.PersonalOrgSlug, UUID: u.ID})
}

type updateUserRequest struct {
	Name *string `json:"name"`
}

func (a *API) updateUser(c *gin.Context) {
	var req updateUserRequest
	if err := decodeJSON(c, &req, false); err != nil {
		a.abort(c, err)
		return
	}
	if err := required("name", req.Name); err != nil {
		a.abort(c, err)
		return
	}
	view, res, err := a.cfg.Service.Rename(c.Request.Context(), a.meta(c), caller(c).user.ID, *req.Name)
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, res) {
		return
	}
	c.JSON(http.StatusOK, userOf(view))
}

func (a *API) deleteUser(c *gin.Context) {
	res, err := a.cfg.Service.DeleteUser(c.Request.Context(), a.meta(c), caller(c).user.ID)
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, res) {
		return
	}
	c.Status(http.StatusNoContent)
}

func (a *API) listTokens(c *gin.Context) {
	rows, err := a.cfg.ReadModel.Tokens(c.Request.Context(), caller(c).user.ID)
	if err != nil {
		a.abort(c, unavailableError{err})
		return
	}
	out := make([]apiTokenJSON, len(rows))
	for i, t := range rows {
		last := t.LastUsedAt
		if at, ok := a.cfg.Usage.Pending(t.ID); ok && (last == nil || at.After(*last)) {
			u := at.UTC()
			last = &u
		}
		out[i] = apiTokenJSON{ID: t.ID, Description: t.Description, CreatedAt: t.CreatedAt.UTC(), ExpiresAt: t.ExpiresAt, LastUsedAt: last}
	}
	c.JSON(http.StatusOK, gin.H{"api_tokens": out})
}

type createTokenRequest struct {
	Description *string     `json:"description"`
	ExpiresAt   expiryField `json:"expires_at"`
}

// expiryField is expires_at: an RFC 3339 date-time or null. Anything else is refused as
// invalid_expires_at, not as a generic decoding error.
type expiryField struct{ t *time.Time }

// UnmarshalJSON implements json.Unmarshaler.
func (f *expiryField) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		f.t = nil
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fail("invalid_expires_at", "expires_at must be an RFC 3339 date-time string such as 2030-01-02T15:04:05Z, or null")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fail("invalid_expires_at", "expires_at must be an RFC 3339 date-time such as 2030-01-02T15:04:05Z, or null")
	}
	f.t = &t
	return nil
}

func (a *API) createToken(c *gin.Context) {
	var req createTokenRequest
	if err := decodeJSON(c, &req, true); err != nil {
		a.abort(c, err)
		return
	}
	key, err := idempotencyKey(c)
	if err != nil {
		a.abort(c, err)
		return
	}
	in := domain.CreateToken{ExpiresAt: req.ExpiresAt.t, IdempotencyKey: key}
	if req.Description != nil {
		in.Description = *req.Description
	}
	out, err := a.cfg.Service.CreateToken(c.Request.Context(), a.meta(c), caller(c).user.ID, in)
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, out.Result) {
		return
	}
	t := out.Token
	c.JSON(http.StatusCreated, gin.H{
		"api_token": apiTokenJSON{ID: t.ID, Description: t.Description, CreatedAt: t.CreatedAt.UTC(), ExpiresAt: t.ExpiresAt},
		"token":     out.Secret,
	})
}

func (a *API) revokeToken(c *gin.Context) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil || len(c.Param("id")) != 36 {
		a.abort(c, fail("invalid_id", "the API token id must be a UUID"))
		return
	}
	res, err := a.cfg.Service.RevokeToken(c.Request.Context(), a.meta(c), caller(c).user.ID, id)
	if err != nil {
		a.abort(c, err)
		return
	}
	if !a.settleFor(c, res) {
		return
	}
	c.Status(http.StatusNoContent)
}

// errorDocs renders the error catalog; every doc_url points at an anchor here.
func (a *API) errorDocs(c *gin.Context) {
	var b strings.Builder
	b.WriteString(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>identityd errors</title>` +
		`<style>body{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}code{background:#eee;padding:0 .2em}</style>` +
		`</head><body><h1>identityd error codes</h1><p>Every error is answered as <code>{"error":{"type","code","message","doc_url","request_id"}}</code>. ` +
		`<code>request_id</code> equals the <code>X-Request-Id</code> response header; quote it when reporting a problem.</p>`)
	for _, code := range sortedCodes() {
		e := codes[code]
		fmt.Fprintf(&b, `<h2 id="%s"><code>%s</code></h2><p>HTTP %d %s · type <code>%s</code></p><p><strong>%s.</strong> %s</p>`,
			code, code, e.Status, http.StatusText(e.Status), e.Type, html.EscapeString(e.Title), html.EscapeString(e.Help))
	}
	b.WriteString(`</body></html>`)
	c.Data(http.StatusOK, "text/html; charset=utf-8", []byte(b.String()))
}
