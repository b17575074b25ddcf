package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/bench/benchtoken"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections"
)

type seededUser struct {
	ID       string
	Session  string
	APIToken string
}

var httpc = &http.Client{Timeout: 30 * time.Second}

// call makes one JSON request and decodes the answer.
func call(ctx context.Context, method, url, token string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(b, out)
	}
	return resp.StatusCode, nil
}

// seedAPI creates --users accounts through the API: sign-up (session) and one API token each.
func (b *bench) seedAPI(ctx context.Context) error {
	n := b.opt.users
	logf("seeding %d users through the API (sign-up + one API token each, 16 clients)", n)
	start := time.Now()
	b.seeded = make([]seededUser, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				var su struct {
					Token string `json:"token"`
					User  struct {
						UUID string `json:"uuid"`
					} `json:"user"`
				}
				if _, err := call(ctx, http.MethodPost, b.idURL+"/api/v0/users", "", map[string]string{
					"email": fmt.Sprintf("api%d-%s@example.com", i, b.runID), "name": fmt.Sprintf("Bench User %d", i),
					"password": "bench password " + b.runID,
				}, &su); err != nil {
					errc <- err
					return
				}
				var tk struct {
					Token string `json:"token"`
				}
				if _, err := call(ctx, http.MethodPost, b.idURL+"/api/v0/user/api-tokens", su.Token,
					map[string]any{"description": "bench", "expires_at": nil}, &tk); err != nil {
					errc <- err
					return
				}
				b.seeded[i] = seededUser{ID: su.User.UUID, Session: su.Token, APIToken: tk.Token}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	d := time.Since(start)
	b.meta["api_seed"] = map[string]any{"users": n, "seconds": d.Seconds(), "signups_plus_tokens_per_s": float64(n) / d.Seconds()}
	logf("seeded %d users in %.1fs (%.0f sign-up+token pairs/s)", n, d.Seconds(), float64(n)/d.Seconds())
	return nil
}

// bulkSeed inserts users and API tokens straight into the read-model tables with bun bulk
// inserts (1,000 rows per statement, 4 writers). It keeps a sample of the plaintext tokens.
func (b *bench) bulkSeed(ctx context.Context, users, tokens int) error {
	logf("bulk-inserting %d users and %d API tokens into users_v1 / api_tokens_v1", users, tokens)
	start := time.Now()
	const batch = 1000
	perUser := (tokens + users - 1) / users
	sampleEvery := max(1, tokens/b.opt.getTokens)
	var mu sync.Mutex
	jobs := make(chan int)
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	now := time.Now().UTC().Truncate(time.Microsecond)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range jobs {
				to := min(from+batch, users)
				us := make([]projections.UserRow, 0, to-from)
				ts := make([]projections.TokenRow, 0, (to-from)*perUser)
				var sample []string
				for i := from; i < to; i++ {
					id := uuid.New()
					us = append(us, projections.UserRow{ID: id, Email: fmt.Sprintf("bulk%d-%s@example.com", i, b.runID),
						Name: fmt.Sprintf("Bulk User %d", i), PersonalOrgSlug: fmt.Sprintf("bulk-user-%d-%s", i, b.runID),
						CreatedAt: now, UpdatedAt: now, Version: 1})
					for k := 0; k < perUser && i*perUser+k < tokens; k++ {
						secret := benchtoken.New("idt_")
						ts = append(ts, projections.TokenRow{ID: uuid.New(), UserID: id, Description: "bulk", Digest: benchtoken.Digest(secret), CreatedAt: now})
						if (i*perUser+k)%sampleEvery == 0 {
							sample = append(sample, secret)
						}
					}
				}
				if _, err := b.db.NewInsert().Model(&us).Exec(ctx); err != nil {
					errc <- fmt.Errorf("bulk insert users: %w", err)
					return
				}
				for k := 0; k < len(ts); k += batch {
					part := ts[k:min(k+batch, len(ts))]
					if _, err := b.db.NewInsert().Model(&part).Exec(ctx); err != nil {
						errc <- fmt.Errorf("bulk insert tokens: %w", err)
						return
					}
				}
				mu.Lock()
				b.bulkSample = append(b.bulkSample, sample...)
				mu.Unlock()
			}
		}()
	}
	var sendErr error
feed:
	for from := 0; from < users; from += batch {
		select {
		case jobs <- from:
		case err := <-errc:
			sendErr = err
			break feed
		case <-ctx.Done():
			sendErr = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(errc)
	if sendErr != nil {
		return sendErr
	}
	if err := <-errc; err != nil {
		return err
	}
	for _, q := range []string{"VACUUM ANALYZE users_v1", "VACUUM ANALYZE api_tokens_v1"} {
		if _, err := b.db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	b.settleDB(ctx)
	d := time.Since(start)
	rate := float64(users+tokens) / d.Seconds()
	b.meta["bulk_seed"] = map[string]any{"users": users, "tokens": tokens, "seconds": d.Seconds(), "rows_per_s": rate}
	logf("bulk-inserted %d rows in %.1fs (%.0f rows/s)", users+tokens, d.Seconds(), rate)
	return nil
}

// newID is a new id as identityd makes them: UUIDv7, time-ordered, so the rows of new users
// and tokens land together at one end of the primary-key indexes instead of on random pages.
func newID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

// writeTokens writes a tokens file for the load generator.
func (b *bench) writeTokens(name string, toks []string) (string, error) {
	p := filepath.Join(b.tmp, name)
	return p, os.WriteFile(p, []byte(strings.Join(toks, "\n")+"\n"), 0o600)
}

// lastSeq is the IDENTITY stream's last sequence.
func (b *bench) lastSeq(ctx context.Context) (uint64, error) {
	js, err := jetstream.New(b.nc)
	if err != nil {
		return 0, err
	}
	st, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// checkpoint is the live projection's position in the read model.
func (b *bench) checkpoint(ctx context.Context) (uint64, error) {
	var pos uint64
	err := b.db.NewRaw("SELECT position FROM projection_checkpoints WHERE name = ?", projections.CurrentTables.Checkpoint()).Scan(ctx, &pos)
	return pos, err
}

// seedEvents appends n events of a realistic per-user history (as the repository's rebuild
// benchmark does) with JetStream async publish: register, set password, log in, rename, two
// tokens, revoke one, rename.
func (b *bench) seedEvents(ctx context.Context, n int) error {
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	meta := events.Metadata{Actor: "system", RequestID: "bench-seed"}
	var u int
	for i := 0; i < n; {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		id := newID()
		tok := newID()
		u++
		perUser := []events.Event{
			events.UserRegistered{UserID: id, Email: fmt.Sprintf("rb%d-%s@example.com", u, b.runID), Name: "User", PersonalOrgSlug: fmt.Sprintf("rb-%d-%s", u, b.runID), RegisteredAt: at},
			events.PasswordSet{UserID: id, PasswordHash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA"},
			events.SessionStarted{UserID: id, SessionID: newID(), Digest: benchtoken.Digest(uuid.NewString()), StartedAt: at, ExpiresAt: at.Add(time.Hour)},
			events.Renamed(id, "User", "Renamed"),
			events.TokenCreated{UserID: id, TokenID: tok, Description: "ci", Digest: benchtoken.Digest(uuid.NewString()), CreatedAt: at},
			events.TokenCreated{UserID: id, TokenID: newID(), Description: "laptop", Digest: benchtoken.Digest(uuid.NewString()), CreatedAt: at},
			events.TokenRevoked{UserID: id, TokenID: tok},
			events.Renamed(id, "Renamed", "Final"),
		}
		chain := ""
		for _, e := range perUser {
			if i == n {
				break
			}
			m, c, err := events.Encode(b.signer, newID().String(), at, meta, chain, e)
			if err != nil {
				return err
			}
			chain = c
			for {
				_, err := js.PublishMsgAsync(m)
				if err == nil {
					break
				}
				if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
					return err
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
			i++
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Minute):
		return fmt.Errorf("seeding %d events timed out", n)
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}
