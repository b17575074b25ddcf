// Command baseline runs the small servers the benchmark compares identityd with, each in its
// own process so that it competes for the machine exactly as identityd does:
//
//	--mode gin   a bare gin engine (no middleware) whose GET /api/v0/user returns the same JSON
//	             shape identityd answers, with no lookup at all.
//	--mode crud  the same endpoints as a plain CRUD service on the same PostgreSQL, using the
//	             same bun + pgdriver pool (16 connections) as identityd's read model, one SQL
//	             statement per request:
//	               GET   /api/v0/user             one SELECT (token digest JOIN user)
//	               PATCH /api/v0/user             one UPDATE … FROM tokens WHERE digest … RETURNING
//	               POST  /api/v0/user/api-tokens  one INSERT … SELECT (auth by digest) … RETURNING
//	             on tables --users-table / --tokens-table (copies of the read model's tables).
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/bench/benchtoken"
	"github.com/identityd/identityd/projections"
)

type userJSON struct {
	Email           string    `json:"email"`
	Name            string    `json:"name"`
	PersonalOrgSlug string    `json:"personal_org_slug"`
	UUID            uuid.UUID `json:"uuid"`
}

type apiTokenJSON struct {
	ID          uuid.UUID  `json:"id"`
	Description string     `json:"description"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	LastUsedAt  *time.Time `json:"last_used_at"`
}

func main() {
	mode := flag.String("mode", "gin", "gin | crud")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	dbURL := flag.String("database-url", "", "PostgreSQL URL (crud)")
	usersTable := flag.String("users-table", "bench_crud_users", "users table (crud)")
	tokensTable := flag.String("tokens-table", "bench_crud_tokens", "tokens table (crud)")
	flag.Parse()

	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch *mode {
	case "gin":
		fixed := userJSON{Email: "ada@example.com", Name: "Ada Lovelace", PersonalOrgSlug: "ada-lovelace-agrag7zwajzx", UUID: uuid.MustParse("0195f3b4-7c1e-7a34-9d6e-3f2a1b0c9d8e")}
		e.GET("/api/v0/user", func(c *gin.Context) { c.JSON(http.StatusOK, fixed) })
	case "crud":
		db, err := projections.OpenDB(ctx, projections.DBConfig{URL: *dbURL})
		if err != nil {
			log.Fatal(err)
		}
		defer db.Close()
		s := &crud{db: db, users: *usersTable, tokens: *tokensTable}
		e.GET("/api/v0/user", s.getUser)
		e.PATCH("/api/v0/user", s.patchUser)
		e.POST("/api/v0/user/api-tokens", s.createToken)
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

type crud struct {
	db            *bun.DB
	users, tokens string
}

func bearer(c *gin.Context) (string, bool) {
	scheme, tok, ok := strings.Cut(c.GetHeader("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || !benchtoken.Valid(strings.TrimSpace(tok)) {
		c.JSON(http.StatusUnauthorized, gin.H{"error": gin.H{"code": "invalid_api_token"}})
		return "", false
	}
	return benchtoken.Digest(strings.TrimSpace(tok)), true
}

func (s *crud) fail(c *gin.Context, err error) {
	if errors.Is(err, sql.ErrNoRows) {
		c.JSON(http.StatusUnauthorized, gin.H{"error": gin.H{"code": "invalid_api_token"}})
		return
	}
	c.JSON(http.StatusServiceUnavailable, gin.H{"error": gin.H{"code": "unavailable", "message": err.Error()}})
}

func (s *crud) getUser(c *gin.Context) {
	digest, ok := bearer(c)
	if !ok {
		return
	}
	var u userJSON
	var exp *time.Time
	err := s.db.NewSelect().ColumnExpr("u.id, u.email, u.name, u.personal_org_slug, t.expires_at").
		TableExpr(s.tokens+" AS t").Join("JOIN "+s.users+" AS u ON u.id = t.user_id").
		Where("t.digest = ?", digest).Scan(c.Request.Context(), &u.UUID, &u.Email, &u.Name, &u.PersonalOrgSlug, &exp)
	if err != nil {
		s.fail(c, err)
		return
	}
	if exp != nil && !time.Now().Before(*exp) {
		c.JSON(http.StatusUnauthorized, gin.H{"error": gin.H{"code": "invalid_api_token"}})
		return
	}
	c.JSON(http.StatusOK, u)
}

func (s *crud) patchUser(c *gin.Context) {
	digest, ok := bearer(c)
	if !ok {
		return
	}
	var req struct {
		Name *string `json:"name"`
	}
	if err := json.NewDecoder(c.Request.Body).Decode(&req); err != nil || req.Name == nil || strings.TrimSpace(*req.Name) == "" {
		c.JSON(http.StatusBadRequest, gin.H{"error": gin.H{"code": "invalid_name"}})
		return
	}
	var u userJSON
	err := s.db.NewRaw("UPDATE "+s.users+" AS u SET name = ?, updated_at = now(), version = u.version + 1 FROM "+s.tokens+" AS t "+
		"WHERE t.digest = ? AND u.id = t.user_id AND (t.expires_at IS NULL OR t.expires_at > now()) "+
		"RETURNING u.id, u.email, u.name, u.personal_org_slug", strings.TrimSpace(*req.Name), digest).
		Scan(c.Request.Context(), &u.UUID, &u.Email, &u.Name, &u.PersonalOrgSlug)
	if err != nil {
		s.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, u)
}

func (s *crud) createToken(c *gin.Context) {
	digest, ok := bearer(c)
	if !ok {
		return
	}
	var req struct {
		Description string     `json:"description"`
		ExpiresAt   *time.Time `json:"expires_at"`
	}
	if err := json.NewDecoder(c.Request.Body).Decode(&req); err != nil {
		c.JSON(http.StatusBadRequest, gin.H{"error": gin.H{"code": "invalid_json"}})
		return
	}
	secret := benchtoken.New("idt_")
	out := apiTokenJSON{ID: uuid.Must(uuid.NewV7()), Description: req.Description, CreatedAt: time.Now().UTC().Truncate(time.Microsecond), ExpiresAt: req.ExpiresAt}
	res, err := s.db.NewRaw("INSERT INTO "+s.tokens+" (id, user_id, description, digest, created_at, expires_at) "+
		"SELECT ?, t.user_id, ?, ?, ?, ? FROM "+s.tokens+" AS t WHERE t.digest = ? AND (t.expires_at IS NULL OR t.expires_at > now())",
		out.ID, out.Description, benchtoken.Digest(secret), out.CreatedAt, out.ExpiresAt, digest).Exec(c.Request.Context())
	if err != nil {
		s.fail(c, err)
		return
	}
	if n, _ := res.RowsAffected(); n != 1 {
		s.fail(c, sql.ErrNoRows)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"api_token": out, "token": secret})
}
