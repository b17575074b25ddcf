package httpapi

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/identityd/identityd/domain"
)

// Administrators. Rights belong to a user id: they are granted and revoked by events
// (identityd.user.admin_granted / admin_revoked) and read from the caller's own user row,
// loaded with the credential by user id. No e-mail address is compared anywhere: an account
// that signs up with a look-alike address, or re-registers a deleted administrator's address,
// is a user id without rights. The first administrator comes from identityd's start-up
// bootstrap (cmd/identityd); administrators make the others here.

// adminUserJSON is a user as administrators see it.
type adminUserJSON struct {
	userJSON
	Admin bool `json:"admin"`
}

// requireAdmin lets administrators through: the caller's user row, loaded by the user id its
// credential belongs to, carries the admin flag. A revocation drops the cached credentials on
// every instance (credcache.Cache), so it takes effect on the next request.
func (a *API) requireAdmin(c *gin.Context) {
	if !caller(c).user.Admin {
		a.abort(c, fail("scope_not_granted", "this endpoint is for administrators"))
		return
	}
	c.Next()
}

// targetUser is the user_id path parameter.
func (a *API) targetUser(c *gin.Context) (uuid.UUID, bool) {
	v := c.Param("user_id")
	id, err := uuid.Parse(v)
	if err != nil || len(v) != 36 {
		a.abort(c, fail("invalid_id", "the user id must be a UUID"))
		return uuid.Nil, false
	}
	return id, true
}

// adminError answers a command's error; an unknown target user is a 404 here, not the caller's
// own account gone (which classify assumes for domain.ErrUserNotFound).
func (a *API) adminError(c *gin.Context, err error) {
	switch {
	case errors.Is(err, domain.ErrUserNotFound):
		a.abort(c, fail("user_not_found", "no user with this id (or it was deleted)"))
	case errors.Is(err, domain.ErrSelfRevocation):
		a.abort(c, fail("admin_self_revocation", "administrators cannot revoke their own administrator rights; ask another administrator"))
	default:
		a.abort(c, err)
	}
}

// getAdminUser shows a user and whether it is an administrator, from the stream.
func (a *API) getAdminUser(c *gin.Context) {
	id, ok := a.targetUser(c)
	if !ok {
		return
	}
	v, err := a.cfg.Service.User(c.Request.Context(), id)
	if err != nil {
		a.adminError(c, err)
		return
	}
	c.JSON(http.StatusOK, adminUserJSON{userJSON: userOf(v), Admin: v.Admin})
}

// grantAdmin makes a user an administrator; granting an administrator changes nothing.
func (a *API) grantAdmin(c *gin.Context) {
	id, ok := a.targetUser(c)
	if !ok {
		return
	}
	res, err := a.cfg.Service.GrantAdmin(c.Request.Context(), a.meta(c), id)
	if err != nil {
		a.adminError(c, err)
		return
	}
	if !a.settleFor(c, res) {
		return
	}
	c.Status(http.StatusNoContent)
}

// revokeAdmin takes a user's administrator rights away. Like a token revocation, it answers
// only once no instance can let the user in as an administrator any more (else 503: retry).
func (a *API) revokeAdmin(c *gin.Context) {
	id, ok := a.targetUser(c)
	if !ok {
		return
	}
	res, err := a.cfg.Service.RevokeAdmin(c.Request.Context(), a.meta(c), caller(c).user.ID, id)
	if err != nil {
		a.adminError(c, err)
		return
	}
	if !a.settleFor(c, res) {
		return
	}
	c.Status(http.StatusNoContent)
}
