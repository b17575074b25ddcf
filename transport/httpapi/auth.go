package httpapi

import (
	"errors"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections"
)

// principal is the authenticated caller.
type principal struct {
	kind    domain.TokenKind
	tokenID uuid.UUID
	user    projections.UserRow
	// profileStale: user's profile fields may predate a rename already recorded; read the user
	// again before showing them (Credential.ProfileStale).
	profileStale bool
}

const principalKey = "principal"

// authenticate resolves the bearer token. A malformed token is refused from its shape and
// checksum alone; a well-formed one is looked up by digest in the read model, which every write
// has reached before it was answered, so a revoked token fails on the very next request.
func (a *API) authenticate(c *gin.Context) {
	h := c.GetHeader("Authorization")
	if h == "" {
		a.abort(c, fail("missing_api_token", "send a token as Authorization: Bearer <token>"))
		return
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		a.abort(c, fail("invalid_api_token", "the Authorization header must be Bearer <token>"))
		return
	}
	kind, digest, err := domain.ParseToken(strings.TrimSpace(token))
	if err != nil {
		a.abort(c, fail("invalid_api_token", "the token is malformed"))
		return
	}
	var cred projections.Credential
	if kind == domain.SessionToken {
		cred, err = a.cfg.Credentials.SessionByDigest(c.Request.Context(), digest)
	} else {
		cred, err = a.cfg.Credentials.APITokenByDigest(c.Request.Context(), digest)
	}
	switch {
	case errors.Is(err, projections.ErrNotFound):
		a.abort(c, fail("invalid_api_token", "the token is unknown, revoked, or its user was deleted"))
		return
	case err != nil:
		a.abort(c, unavailableError{err})
		return
	}
	now := a.cfg.Now()
	if cred.Expired(now) {
		a.abort(c, fail("invalid_api_token", "the token has expired"))
		return
	}
	a.cfg.Usage.Touch(cred.TokenID, now.UTC().Truncate(time.Microsecond)) // what the database keeps
	c.Set(principalKey, principal{kind: kind, tokenID: cred.TokenID, user: cred.User, profileStale: cred.ProfileStale})
	c.Next()
}

// caller is the principal set by authenticate; routes without it are never behind it.
func caller(c *gin.Context) principal {
	p, _ := c.Get(principalKey)
	pr, _ := p.(principal)
	return pr
}

// meta is the event metadata of a command made by this request.
func (a *API) meta(c *gin.Context) events.Metadata {
	m := events.Metadata{RequestID: requestID(c), Actor: "anonymous", SourceIP: c.ClientIP(), UserAgent: c.Request.UserAgent()}
	if pr, ok := c.Value(principalKey).(principal); ok {
		m.Actor = "user:" + pr.user.ID.String() + "/" + pr.kind.String() + ":" + pr.tokenID.String()
	}
	return m
}
