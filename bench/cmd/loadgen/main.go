// Command loadgen is the benchmark harness's load generator: a separate process that runs
// closed-loop HTTP load (keep-alive, a fixed number of connections, a fixed duration) against
// identityd or a baseline server and prints one JSON object:
//
//	{"scenario":…,"connections":64,"duration_s":10,"requests":…,"errors":…,"rps":…,
//	 "p50_ms":…,"p90_ms":…,"p99_ms":…,"max_ms":…,"status":{"200":…}}
//
// Scenarios:
//
//	get-user          GET /api/v0/user; each request uses the next token of --tokens (round robin)
//	patch-user        PATCH /api/v0/user {"name": unique}; connection i always uses token i
//	create-token-use  POST /api/v0/user/api-tokens with token i, then at once GET /api/v0/user
//	                  with the new token; one operation = the pair (counted, timed as one)
//	get-path          GET --path, no token (e.g. /healthz)
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Scenario    string         `json:"scenario"`
	URL         string         `json:"url"`
	Connections int            `json:"connections"`
	DurationS   float64        `json:"duration_s"`
	WarmupS     float64        `json:"warmup_s"`
	Requests    int64          `json:"requests"`
	Errors      int64          `json:"errors"`
	RPS         float64        `json:"rps"`
	P50ms       float64        `json:"p50_ms"`
	P90ms       float64        `json:"p90_ms"`
	P99ms       float64        `json:"p99_ms"`
	MaxMs       float64        `json:"max_ms"`
	Status      map[string]int `json:"status"`
	FirstError  string         `json:"first_error,omitempty"`
	Unit        string         `json:"unit"`
}

func main() {
	var (
		base     = flag.String("url", "", "base URL of the server, e.g. http://127.0.0.1:8080")
		scenario = flag.String("scenario", "get-user", "get-user | patch-user | create-token-use | get-path")
		path     = flag.String("path", "/healthz", "path for get-path")
		tokFile  = flag.String("tokens", "", "file with one bearer token per line")
		conns    = flag.Int("connections", 64, "concurrent connections (one closed-loop worker each)")
		duration = flag.Duration("duration", 10*time.Second, "measured duration")
		warmup   = flag.Duration("warmup", time.Second, "unmeasured warm-up before the measurement")
		timeout  = flag.Duration("timeout", 10*time.Second, "per-request timeout")
	)
	flag.Parse()
	if err := run(*base, *scenario, *path, *tokFile, *conns, *duration, *warmup, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func readTokens(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path) //nolint:gosec // operator-supplied path
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			out = append(out, t)
		}
	}
	return out, sc.Err()
}

// worker state shared by all connections.
type shared struct {
	client    *http.Client
	base      string
	tokens    []string
	measuring atomic.Bool
	stop      atomic.Bool

	mu       sync.Mutex
	status   map[string]int
	firstErr string
}

func (s *shared) note(code string, err string) {
	s.mu.Lock()
	s.status[code]++
	if err != "" && s.firstErr == "" {
		s.firstErr = err
	}
	s.mu.Unlock()
}

func run(base, scenario, path, tokFile string, conns int, duration, warmup, timeout time.Duration) error {
	if base == "" {
		return errors.New("--url is required")
	}
	tokens, err := readTokens(tokFile)
	if err != nil {
		return err
	}
	switch scenario {
	case "get-user", "patch-user", "create-token-use":
		if len(tokens) == 0 {
			return fmt.Errorf("scenario %s needs --tokens", scenario)
		}
	case "get-path":
	default:
		return fmt.Errorf("unknown scenario %q", scenario)
	}
	if scenario != "get-user" && scenario != "get-path" && len(tokens) < conns {
		return fmt.Errorf("scenario %s needs one token per connection: %d tokens for %d connections", scenario, len(tokens), conns)
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns * 2,
		MaxIdleConnsPerHost: conns * 2,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	s := &shared{client: &http.Client{Transport: tr, Timeout: timeout}, base: strings.TrimRight(base, "/"), tokens: tokens, status: map[string]int{}}

	lat := make([][]time.Duration, conns)
	errs := make([]int64, conns)
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var n int
			for !s.stop.Load() {
				measured := s.measuring.Load()
				start := time.Now()
				ok := s.op(scenario, path, i, conns, n)
				d := time.Since(start)
				n++
				if !measured || !s.measuring.Load() {
					continue // started during warm-up or finished after the end
				}
				lat[i] = append(lat[i], d)
				if !ok {
					errs[i]++
				}
			}
		}(i)
	}
	time.Sleep(warmup)
	s.mu.Lock()
	s.status = map[string]int{}
	s.firstErr = ""
	s.mu.Unlock()
	s.measuring.Store(true)
	t0 := time.Now()
	time.Sleep(duration)
	s.measuring.Store(false)
	elapsed := time.Since(t0)
	s.stop.Store(true)
	wg.Wait()

	var all []time.Duration
	var nerr int64
	for i := range lat {
		all = append(all, lat[i]...)
		nerr += errs[i]
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		idx := int(p*float64(len(all))+0.5) - 1
		idx = max(0, min(idx, len(all)-1))
		return float64(all[idx].Microseconds()) / 1000
	}
	unit := "req/s"
	if scenario == "create-token-use" {
		unit = "pairs/s (POST token + GET with it)"
	}
	res := result{
		Scenario: scenario, URL: base, Connections: conns, DurationS: elapsed.Seconds(), WarmupS: warmup.Seconds(),
		Requests: int64(len(all)), Errors: nerr, RPS: float64(int64(len(all))-nerr) / elapsed.Seconds(),
		P50ms: pct(0.50), P90ms: pct(0.90), P99ms: pct(0.99), Status: s.status, FirstError: s.firstErr, Unit: unit,
	}
	if len(all) > 0 {
		res.MaxMs = float64(all[len(all)-1].Microseconds()) / 1000
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// op runs one operation of worker i (its n-th) and reports success. rps counts successes only.
func (s *shared) op(scenario, path string, i, conns, n int) bool {
	switch scenario {
	case "get-path":
		code, _, err := s.do(http.MethodGet, path, "", nil)
		return s.ok(code, err, http.StatusOK)
	case "get-user":
		tok := s.tokens[(i+n*conns)%len(s.tokens)]
		code, _, err := s.do(http.MethodGet, "/api/v0/user", tok, nil)
		return s.ok(code, err, http.StatusOK)
	case "patch-user":
		body := []byte(`{"name":"Bench ` + strconv.Itoa(i) + ` ` + strconv.Itoa(n) + `"}`)
		code, _, err := s.do(http.MethodPatch, "/api/v0/user", s.tokens[i], body)
		return s.ok(code, err, http.StatusOK)
	case "create-token-use":
		body := []byte(`{"description":"bench ` + strconv.Itoa(n) + `","expires_at":"2035-01-01T00:00:00Z"}`)
		code, resp, err := s.do(http.MethodPost, "/api/v0/user/api-tokens", s.tokens[i], body)
		if !s.ok(code, err, http.StatusCreated) {
			return false
		}
		var out struct {
			Token string `json:"token"`
		}
		if err := json.Unmarshal(resp, &out); err != nil || out.Token == "" {
			s.note("bad_body", "create token: no token in answer: "+string(resp))
			return false
		}
		code, _, err = s.do(http.MethodGet, "/api/v0/user", out.Token, nil)
		return s.ok(code, err, http.StatusOK)
	}
	return false
}

func (s *shared) ok(code int, err error, want int) bool {
	if err != nil {
		s.note("transport_error", err.Error())
		return false
	}
	if code != want {
		s.note(strconv.Itoa(code), fmt.Sprintf("status %d, want %d", code, want))
		return false
	}
	s.note(strconv.Itoa(code), "")
	return true
}

func (s *shared) do(method, path, token string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, s.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	b, err := io.ReadAll(resp.Body) // read fully so the connection is kept alive
	_ = resp.Body.Close()
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode >= 300 && len(b) > 0 {
		s.mu.Lock()
		if s.firstErr == "" {
			s.firstErr = fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
		}
		s.mu.Unlock()
	}
	return resp.StatusCode, b, nil
}
