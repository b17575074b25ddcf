package httpapi

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/projections"
)

// OpenAPI is the API's OpenAPI 3.0 document.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Credentials answers who a bearer token belongs to, and the user's profile. With the
// credential cache on it is the cache (credcache.Cache), which answers from memory and refreshes
// profiles a rename made stale; otherwise it is the read model itself.
type Credentials interface {
	APITokenByDigest(ctx context.Context, digest string) (projections.Credential, error)
	SessionByDigest(ctx context.Context, digest string) (projections.Credential, error)
	User(ctx context.Context, id uuid.UUID) (projections.UserRow, error)
}

// ReadModel is what the API lists from the read model: a user's tokens and the audit log.
type ReadModel interface {
	Tokens(ctx context.Context, userID uuid.UUID) ([]projections.Token, error)
	AuditEvents(ctx context.Context, f projections.AuditFilter) ([]projections.AuditRow, error)
}

// Barrier waits until the read model includes a stream sequence (read-your-writes).
type Barrier interface {
	WaitFor(ctx context.Context, seq uint64) error
}

// Fence waits, after a write changed a profile or took credentials away, until no instance
// can still answer from memory as of before the write (credcache.Cache.Fence).
type Fence interface {
	Fence(ctx context.Context, seq uint64, acked time.Time) error
}

// Usage records and reports token use.
type Usage interface {
	Touch(id uuid.UUID, at time.Time)
	Pending(id uuid.UUID) (time.Time, bool)
}

// Config wires the API to the domain and the read side.
type Config struct {
	Service *domain.Service
	// Credentials authenticates callers and reads profiles; ReadModel lists tokens and audit
	// rows. Without the cache both are the read model.
	Credentials Credentials
	ReadModel   ReadModel
	Barrier     Barrier
	// Fence, when credentials are cached in memory, is the cache's commit wait; nil when not.
	Fence Fence
	Usage Usage
	// EventKeys are published at /api/v0/event-keys (required).
	EventKeys EventKeys
	// Ready reports whether the backing services answer (for /readyz).
	Ready func(ctx context.Context) error
	// PublicURL is the externally visible base URL, used in doc_url (e.g. http://127.0.0.1:8080).
	PublicURL string
	// TrustedProxies are the proxies whose X-Forwarded-For names the client address recorded in
	// events; none by default, so the address is the connection's peer.
	TrustedProxies []string
	// ConsistencyTimeout bounds the read-your-writes wait after a write (default 5s).
	ConsistencyTimeout time.Duration
	Logger             *slog.Logger
	Now                func() time.Time
}

func (c *Config) fill() {
	if c.ConsistencyTimeout <= 0 {
		c.ConsistencyTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Ready == nil {
		c.Ready = func(context.Context) error { return nil }
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.Service == nil || c.Credentials == nil || c.ReadModel == nil || c.Barrier == nil || c.Usage == nil {
		return errors.New("httpapi: Service, Credentials, ReadModel, Barrier and Usage are required")
	}
	if c.EventKeys.Trusted == nil {
		return errors.New("httpapi: EventKeys are required")
	}
	return nil
}

// API is the HTTP API.
type API struct {
	cfg    Config
	engine *gin.Engine
}

// New builds the API's router.
func New(cfg Config) (*API, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.HandleMethodNotAllowed = true
	e.RedirectTrailingSlash = false // a 404 in the envelope beats a redirect clients may not follow
	e.RedirectFixedPath = false
	if err := e.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("httpapi: trusted proxies: %w", err)
	}
	a := &API{cfg: cfg, engine: e}
	e.Use(a.withRequestID, a.accessLog, a.recover, a.limitHeaders)
	e.NoRoute(func(c *gin.Context) { a.abort(c, fail("not_found", "no such path: "+c.Request.URL.Path)) })
	e.NoMethod(func(c *gin.Context) {
		a.abort(c, fail("method_not_allowed", c.Request.Method+" is not allowed on "+c.Request.URL.Path))
	})

	e.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	e.GET("/readyz", a.readyz)
	e.GET("/api/v0/openapi.yaml", func(c *gin.Context) { c.Data(http.StatusOK, "application/yaml", OpenAPI) })
	e.GET("/docs/errors", a.errorDocs)

	v0 := e.Group("/api/v0")
	v0.POST("/users", a.signUp)
	v0.POST("/sessions", a.logIn)
	v0.GET("/event-keys", a.eventKeys)
	authed := v0.Group("", a.authenticate)
	authed.DELETE("/sessions/current", a.logOut)
	authed.GET("/user", a.getUser)
	authed.PATCH("/user", a.updateUser)
	authed.DELETE("/user", a.deleteUser)
	authed.GET("/user/api-tokens", a.listTokens)
	authed.POST("/user/api-tokens", a.createToken)
	authed.DELETE("/user/api-tokens/:id", a.revokeToken)
	authed.GET("/user/events", a.userEvents)
	admin := authed.Group("/admin", a.requireAdmin)
	admin.GET("/events", a.adminEvents)
	admin.GET("/users/:user_id", a.getAdminUser)
	admin.PUT("/users/:user_id/admin", a.grantAdmin)
	admin.DELETE("/users/:user_id/admin", a.revokeAdmin)
	return a, nil
}

// SetPublicURL changes the base URL of doc_url links, for servers whose address is known only
// after they listen. Call it before serving.
func (a *API) SetPublicURL(u string) { a.cfg.PublicURL = strings.TrimRight(u, "/") }

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.engine.ServeHTTP(w, r) }

var validRequestID = regexp.MustCompile(`^[A-Za-z0-9._:\-]{1,128}$`)

const requestIDKey = "request_id"

// withRequestID accepts a well-formed incoming X-Request-Id or makes one, and echoes it.
func (a *API) withRequestID(c *gin.Context) {
	id := c.GetHeader("X-Request-Id")
	if !validRequestID.MatchString(id) {
		id = "req_" + uuid.Must(uuid.NewV7()).String()
	}
	c.Set(requestIDKey, id)
	c.Header("X-Request-Id", id)
	c.Next()
}

func requestID(c *gin.Context) string { return c.GetString(requestIDKey) }

// accessLog logs one line per request: never the Authorization header nor bodies.
func (a *API) accessLog(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "(unmatched)"
	}
	a.cfg.Logger.Debug("http", "method", c.Request.Method, "route", route, "status", c.Writer.Status(),
		"duration_ms", float64(time.Since(start).Microseconds())/1000, "request_id", requestID(c))
}

// recover turns a panic into a 500 in the envelope.
func (a *API) recover(c *gin.Context) {
	defer func() {
		if r := recover(); r != nil {
			if r == http.ErrAbortHandler { //nolint:errorlint // sentinel re-panicked by contract
				panic(r)
			}
			a.cfg.Logger.Error("panic", "request_id", requestID(c), "panic", r)
			a.abort(c, fail("internal_error", "internal error"))
		}
	}()
	c.Next()
}

func (a *API) readyz(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
	defer cancel()
	if err := a.cfg.Ready(ctx); err != nil {
		a.cfg.Logger.Warn("not ready", "err", err)
		a.abort(c, fail("service_unavailable", "not ready: "+err.Error()))
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
}
