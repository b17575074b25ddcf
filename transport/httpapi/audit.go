package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/identityd/identityd/projections"
)

// auditEventJSON is one entry of an audit history: who did what, when, from where.
type auditEventJSON struct {
	ID            string          `json:"id"`
	Sequence      uint64          `json:"sequence"`
	Type          string          `json:"type"`
	Subject       string          `json:"subject"`
	UserID        *uuid.UUID      `json:"user_id"`
	Time          time.Time       `json:"time"`
	Actor         string          `json:"actor"`
	RequestID     string          `json:"request_id"`
	SourceIP      string          `json:"source_ip"`
	UserAgent     string          `json:"user_agent"`
	SchemaVersion int             `json:"schema_version"`
	Data          json.RawMessage `json:"data"`
}

const (
	defaultPageSize = 50
	maxPageSize     = 200
)

// userEvents is the caller's own history, newest first, cursor-paginated.
func (a *API) userEvents(c *gin.Context) {
	id := caller(c).user.ID
	f, err := pageFilter(c)
	if err != nil {
		a.abort(c, err)
		return
	}
	f.UserID = &id
	a.auditPage(c, f)
}

// adminEvents is the whole audit log with filters, like Keycloak's admin events.
func (a *API) adminEvents(c *gin.Context) {
	f, err := pageFilter(c)
	if err != nil {
		a.abort(c, err)
		return
	}
	if v := c.Query("user_id"); v != "" {
		id, err := uuid.Parse(v)
		if err != nil {
			a.abort(c, fail("invalid_filter", "user_id must be a UUID"))
			return
		}
		f.UserID = &id
	}
	f.Type = c.Query("type")
	f.ActorPrefix = c.Query("actor")
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := c.Query(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				a.abort(c, fail("invalid_filter", name+" must be an RFC 3339 date-time such as 2026-01-02T15:04:05Z"))
				return
			}
			*dst = t
		}
	}
	a.auditPage(c, f)
}

// pageFilter reads limit and cursor. The cursor is the stream sequence the next page starts
// below; it is opaque to clients.
func pageFilter(c *gin.Context) (projections.AuditFilter, error) {
	f := projections.AuditFilter{Limit: defaultPageSize}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return f, fail("invalid_filter", "limit must be an integer from 1 to 200")
		}
		f.Limit = n
	}
	if v := c.Query("cursor"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return f, fail("invalid_cursor", "the cursor is not one this API returned")
		}
		f.Before = n
	}
	return f, nil
}

func (a *API) auditPage(c *gin.Context, f projections.AuditFilter) {
	want := f.Limit
	f.Limit++ // one more tells whether there is a next page
	rows, err := a.cfg.ReadModel.AuditEvents(c.Request.Context(), f)
	if err != nil {
		a.abort(c, unavailableError{err})
		return
	}
	var next *string
	if len(rows) > want {
		rows = rows[:want]
		cur := strconv.FormatUint(rows[want-1].Sequence, 10)
		next = &cur
	}
	out := make([]auditEventJSON, len(rows))
	for i, r := range rows {
		out[i] = auditEventJSON{
			ID: r.EventID, Sequence: r.Sequence, Type: r.Type, Subject: r.Aggregate, UserID: r.UserID,
			Time: r.OccurredAt.UTC(), Actor: r.Actor, RequestID: r.RequestID, SourceIP: r.SourceIP,
			UserAgent: r.UserAgent, SchemaVersion: r.SchemaVersion, Data: json.RawMessage(r.Data),
		}
	}
	c.JSON(http.StatusOK, gin.H{"events": out, "next_cursor": next})
}
