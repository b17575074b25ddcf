//go:build faults

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/projections/dbtest"
)

// fltNode is one nats-server process of the test cluster.
type fltNode struct {
	name, url, conf string
	proc            *fltProc
}

// fltStreamInfo is the IDENTITY stream's info as seen through url.
func fltStreamInfo(url string) (*jetstream.StreamInfo, error) {
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return nil, err
	}
	return s.Info(ctx)
}

// fltLeaders names the node leading the stream and the one holding the (single, ordered)
// consumer of the projector.
func fltLeaders(url string) (stream, consumer string, err error) {
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return "", "", err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return "", "", err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return "", "", err
	}
	if info.Cluster != nil {
		stream = info.Cluster.Leader
	}
	l := s.ListConsumers(ctx)
	for ci := range l.Info() {
		if ci.Cluster != nil {
			consumer = ci.Cluster.Leader
		}
	}
	return stream, consumer, l.Err()
}

// TestFaultClusterNodeKilled: identityd on a three-node NATS cluster with an R3 stream keeps
// taking writes when a node is SIGKILLed: first a node that leads nothing of the stream (the
// one identityd is connected to when possible), then, after it rejoined, the stream leader.
// Nothing acknowledged is lost and the read models verify against the stream.
func TestFaultClusterNodeKilled(t *testing.T) {
	tmp := t.TempDir()
	bin := fltBuild(t, "github.com/nats-io/nats-server/v2", tmp, "nats-server")

	nodes := make([]*fltNode, 3)
	cports := make([]int, 3)
	for i := range nodes {
		nodes[i] = &fltNode{name: fmt.Sprintf("n%d", i+1), url: fmt.Sprintf("nats://127.0.0.1:%d", fltFreePort(t))}
		cports[i] = fltFreePort(t)
	}
	var urls []string
	for i, n := range nodes {
		var routes []string
		for j := range nodes {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cports[j]))
			}
		}
		n.conf = filepath.Join(tmp, n.name+".conf")
		conf := fmt.Sprintf(`server_name: %s
listen: %q
jetstream { store_dir: %q, sync_interval: always }
cluster { name: idc, listen: "127.0.0.1:%d", routes: [%s] }
`, n.name, strings.TrimPrefix(n.url, "nats://"), filepath.Join(tmp, n.name), cports[i], strings.Join(routes, ", "))
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		urls = append(urls, n.url)
	}
	startNode := func(n *fltNode) { n.proc = fltStartProc(t, bin, os.Environ(), "-c", n.conf) }
	defer func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s log:\n%s", n.name, n.proc.stderr.tail(3000))
			}
		}
	}()
	for _, n := range nodes {
		startNode(n)
	}
	allURLs := strings.Join(urls, ",")

	// Wait for a JetStream meta leader: account info answers.
	clusterStart := time.Now()
	for {
		err := func() error {
			nc, err := nats.Connect(allURLs, nats.Timeout(time.Second))
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = js.AccountInfo(ctx)
			return err
		}()
		if err == nil {
			break
		}
		if time.Since(clusterStart) > 30*time.Second {
			t.Fatalf("no JetStream meta leader within 30s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("cluster has a meta leader after %s", time.Since(clusterStart).Round(time.Millisecond))

	dbURL := dbtest.PostgresURL(t)
	in, logs := fltStartInstance(t, allURLs, 3, dbURL)
	defer func() {
		if t.Failed() {
			t.Logf("identityd log:\n%s", logs.tail(6000))
		}
	}()
	info, err := fltStreamInfo(allURLs)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream is not replicated on three nodes: replicas %d, cluster %+v", info.Config.Replicas, info.Cluster)
	}
	const workers = 8
	users := fltSignUps(t, in.URL, "cluster", workers)
	initial := func(i int) string { return fmt.Sprintf("cluster %d", i) }

	// runPhase drives the load, kills the node victim picks once the load runs, keeps writing
	// for `after` and returns the writes with the kill time. Every answer is 2xx, or 503/409
	// in the envelope: never a 500, never a dropped connection.
	var allOps []fltOp
	runPhase := func(label string, victim func(leader, consumer, connected string) *fltNode, after time.Duration) ([]fltOp, time.Time, *fltNode) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), after+20*time.Second)
		defer cancel()
		load := fltStartLoad(ctx, func() string { return in.URL }, users, 5000)
		time.Sleep(1500 * time.Millisecond)
		leader, consumer, err := fltLeaders(allURLs)
		if err != nil {
			cancel()
			load.wait()
			t.Fatalf("%s: stream info: %v", label, err)
		}
		connected := in.NATS().ConnectedServerName()
		v := victim(leader, consumer, connected)
		killedAt := time.Now()
		v.proc.kill(t)
		t.Logf("%s: killed %s (stream leader %s, projector's consumer on %s, identityd connected to %s)", label, v.name, leader, consumer, connected)
		time.Sleep(after)
		cancel()
		ops := load.wait()
		allOps = append(allOps, ops...)
		for _, op := range ops {
			r := op.Resp
			if r.Err != nil || (!r.ok() && r.Status != http.StatusServiceUnavailable && r.Status != http.StatusConflict) {
				t.Errorf("%s: %s of %s: %s (want 2xx, 503 or 409)", label, op.Kind, op.UserID, r)
			} else if (r.Status == http.StatusServiceUnavailable && r.Code != "service_unavailable") ||
				(r.Status == http.StatusConflict && r.Code != "concurrent_modification") {
				t.Errorf("%s: %s: wrong error code", label, r)
			}
		}
		return ops, killedAt, v
	}
	// fastShare is the share of the writes started in [from, to) after the kill that answered
	// 2xx within 3s, with their count and latencies.
	fastShare := func(ops []fltOp, killedAt time.Time, from, to time.Duration) (float64, int, []time.Duration) {
		var n, fast int
		var lat []time.Duration
		for _, op := range ops {
			if d := op.Start.Sub(killedAt); d < from || d >= to {
				continue
			}
			n++
			lat = append(lat, op.Resp.Dur)
			if op.Resp.ok() && op.Resp.Dur <= 3*time.Second {
				fast++
			}
		}
		return float64(fast) / float64(max(n, 1)), n, lat
	}
	waitRejoin := func(n *fltNode) {
		t.Helper()
		startNode(n)
		rejoin := time.Now()
		for {
			info, err := fltStreamInfo(allURLs)
			current := 0
			if err == nil && info.Cluster != nil {
				for _, p := range info.Cluster.Replicas {
					if p.Current && !p.Offline {
						current++
					}
				}
			}
			if current == 2 {
				break
			}
			if time.Since(rejoin) > 30*time.Second {
				t.Fatalf("%s did not catch up within 30s: %v %+v", n.name, err, info)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s rejoined and caught up in %s", n.name, time.Since(rejoin).Round(time.Millisecond))
	}

	// Phase 1: a node that is neither the stream leader nor the node identityd is connected
	// to (one always exists among three), preferring one without the projector's consumer.
	// At least 90% of the writes after the kill answer 2xx within 3s.
	ops, killedAt, victim := runPhase("follower", func(leader, consumer, connected string) *fltNode {
		var pick *fltNode
		for _, n := range nodes {
			if n.name != leader && n.name != connected && (pick == nil || n.name != consumer) {
				pick = n
			}
		}
		return pick
	}, 4*time.Second)
	rate, n, lat := fastShare(ops, killedAt, 0, time.Hour)
	t.Logf("follower: %d writes after the kill, %.1f%% answered 2xx within 3s (p50 %s, p99 %s, max %s)",
		n, 100*rate, fltQuantile(lat, 0.5), fltQuantile(lat, 0.99), fltQuantile(lat, 1))
	if n < workers || rate < 0.9 {
		t.Errorf("follower: %.1f%% of %d writes after the kill answered 2xx within 3s; want at least 90%%", 100*rate, n)
	}
	waitRejoin(victim)

	// Phase 2: the node identityd is connected to (possibly also the stream leader): the
	// client moves to another node. Writes fail over a window, then answer within 3s again.
	ops, killedAt, _ = runPhase("connected node", func(_, _, connected string) *fltNode {
		for _, n := range nodes {
			if n.name == connected {
				return n
			}
		}
		t.Fatalf("identityd is connected to %q, not a node of the cluster", connected)
		return nil
	}, 16*time.Second)
	var lastSlow time.Duration
	lagging := 0
	for _, op := range ops {
		if op.Resp.Lag {
			lagging++
		}
		if d := op.Start.Sub(killedAt); d >= 0 && !(op.Resp.ok() && op.Resp.Dur <= 3*time.Second) && d > lastSlow {
			lastSlow = d
		}
	}
	rate, n, lat = fastShare(ops, killedAt, 0, time.Hour)
	tailRate, tailN, _ := fastShare(ops, killedAt, 13*time.Second, time.Hour)
	t.Logf("connected node: %d writes after the kill, %.1f%% answered 2xx within 3s (p50 %s, p99 %s, max %s); the last slow or failed one started %s after the kill; %d answered with the read model lagging; from 13s on %.1f%% of %d",
		n, 100*rate, fltQuantile(lat, 0.5), fltQuantile(lat, 0.99), fltQuantile(lat, 1), lastSlow.Round(time.Millisecond), lagging, 100*tailRate, tailN)
	if tailN < workers || tailRate < 0.9 {
		t.Errorf("connected node: writes did not recover: from 13s after the kill %.1f%% of %d answered 2xx within 3s", 100*tailRate, tailN)
	}

	st := openStore(t, allURLs, embedded.Keys{}, 3, bytes.Repeat([]byte{7}, 32))
	fltCheckAcked(t, st, allOps)
	fltCheckReads(t, in.URL, users, initial, allOps)
	fltFinalWrites(t, in.URL, users)
	fltVerify(t, st, dbURL)
}
