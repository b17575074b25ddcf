package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

var scenarioNames = map[string]string{
	"1":    "GET /api/v0/user (auth by token), throughput",
	"1p99": "GET /api/v0/user (auth by token), p99 latency",
	"2a":   "PATCH /api/v0/user vs raw JetStream appends",
	"2b":   "PATCH /api/v0/user vs CRUD UPDATE",
	"3":    "POST api-token + use it at once vs CRUD",
	"4":    "rebuild all read models from the stream",
	"5":    "projection lag at a steady event rate",
	"6":    "identityd RSS with a large read model",
	"7":    "cold start, embedded defaults, to first served request",
}

// row is one line of the results table (and of the JSON file).
type row struct {
	ID            string         `json:"id"`
	Scenario      string         `json:"scenario"`
	Figure        *float64       `json:"figure,omitempty"`
	Unit          string         `json:"unit,omitempty"`
	Baseline      string         `json:"baseline,omitempty"`
	BaselineValue *float64       `json:"baseline_value,omitempty"`
	Ratio         *float64       `json:"ratio,omitempty"`
	Target        string         `json:"target"`
	Met           *bool          `json:"met,omitempty"`
	Status        string         `json:"status"` // measured | failed | not implemented | not run
	Note          string         `json:"note,omitempty"`
	Details       map[string]any `json:"details,omitempty"`
}

func f64(v float64) *float64 { return &v }
func bptr(v bool) *bool      { return &v }

func (b *bench) add(r row) {
	if r.Scenario == "" {
		r.Scenario = scenarioNames[r.ID]
	}
	if r.Status == "" {
		r.Status = "measured"
	}
	b.rows = append(b.rows, r)
}

func (b *bench) hasRow(id string) bool {
	for _, r := range b.rows {
		if r.ID == id {
			return true
		}
	}
	return false
}

// ratioRow fills ratio and met for "figure/baseline >= min" (or <= max when atMost).
func ratioRow(r row, limit float64, atMost bool) row {
	if r.Figure != nil && r.BaselineValue != nil && *r.BaselineValue > 0 {
		q := *r.Figure / *r.BaselineValue
		r.Ratio = &q
		if atMost {
			r.Met = bptr(q <= limit)
		} else {
			r.Met = bptr(q >= limit)
		}
	}
	return r
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func num(v *float64) string {
	if v == nil {
		return "—"
	}
	x := *v
	switch {
	case math.Abs(x) >= 1000:
		return fmt.Sprintf("%.0f", x)
	case math.Abs(x) >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

func (b *bench) printHeader() {
	fmt.Println()
	fmt.Println("identityd benchmark — fresh deployment on this machine")
	fmt.Printf("  machine     %d CPUs, %s; load generator and servers share it\n", b.meta["cpus"], b.meta["go"])
	fmt.Printf("  NATS        nats-server %s, JetStream file storage, sync_interval: %s, %d node(s), %d replica(s), %s\n", b.nc.ConnectedServerVersion(), b.syncDescription(), b.opt.natsNodes, b.opt.natsNodes, b.natsURL)
	fmt.Printf("  PostgreSQL  %s at %s, fresh database %s; fsync=%s synchronous_commit=%s full_page_writes=%s\n",
		b.pgSettings["version"], b.pgSettings["server"], b.dbName, b.pgSettings["fsync"], b.pgSettings["synchronous_commit"], b.pgSettings["full_page_writes"])
	fmt.Printf("  identityd   process on external NATS + PostgreSQL, argon2id m=%d KiB t=%d (low: seeding only), log level warn\n", argonMemKiB, argonTime)
	fmt.Printf("  load        bench/cmd/loadgen (separate process, closed loop, keep-alive): %s measured after %s warm-up per run;\n", b.opt.duration, b.opt.warmup)
	fmt.Printf("              %d connections for GET, %d for writes (one distinct user per connection)\n", b.opt.getConns, b.opt.writeConns)
	size := "REDUCED sizes (use --full for 1,000,000 users / 2,000,000 tokens / 1,000,000 events)"
	if b.opt.full {
		size = "FULL sizes"
	}
	fmt.Printf("  sizes       %s: (6) %d users + %d tokens, (4) %d events\n\n", size, b.opt.memUsers, b.opt.memTokens, b.opt.rebuildEvents)
}

func (b *bench) printTable() {
	order := map[string]int{"1": 0, "1p99": 1, "2a": 2, "2b": 3, "3": 4, "4": 5, "5": 6, "6": 7, "7": 8}
	rows := append([]row(nil), b.rows...)
	for i := range rows { // stable insertion sort by scenario order
		for j := i; j > 0 && order[rows[j].ID] < order[rows[j-1].ID]; j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
	fmt.Println()
	fmt.Printf("%-5s %-52s %12s %-22s %12s %-28s %7s %-10s %s\n", "id", "scenario", "figure", "unit", "baseline", "baseline is", "ratio", "target", "met")
	fmt.Println(strings.Repeat("-", 170))
	for _, r := range rows {
		met := "—"
		switch {
		case r.Status != "measured":
			met = strings.ToUpper(r.Status)
		case r.Met != nil && *r.Met:
			met = "yes"
		case r.Met != nil:
			met = "NO"
		}
		ratio := "—"
		if r.Ratio != nil {
			ratio = fmt.Sprintf("%.2f×", *r.Ratio)
		}
		fmt.Printf("%-5s %-52s %12s %-22s %12s %-28s %7s %-10s %s\n", r.ID, trunc(r.Scenario, 52), num(r.Figure), trunc(r.Unit, 22),
			num(r.BaselineValue), trunc(r.Baseline, 28), ratio, r.Target, met)
		if r.Note != "" {
			fmt.Printf("      note: %s\n", r.Note)
		}
	}
	fmt.Println()
}

func trunc(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func (b *bench) writeJSON() error {
	path := b.opt.out
	if !filepath.IsAbs(path) {
		path = filepath.Join(b.root, path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	doc := map[string]any{"run": b.meta, "results": b.rows}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(out, '\n'), 0o600); err != nil {
		return err
	}
	stamped := filepath.Join(filepath.Dir(path), "run-"+time.Now().UTC().Format("20060102T150405Z")+".json")
	_ = os.WriteFile(stamped, append(out, '\n'), 0o600)
	fmt.Printf("results: %s (also %s)\n", path, stamped)
	return nil
}
