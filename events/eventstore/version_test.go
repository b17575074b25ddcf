package eventstore

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestVersionAtLeast(t *testing.T) {
	for _, c := range []struct {
		have string
		ok   bool
	}{
		{"2.12.0", true}, {"2.12.3", true}, {"2.15.2", true}, {"3.0.0", true}, {"v2.12.0-beta.1", true},
		{"2.11.9", false}, {"2.9.10", false}, {"1.99.99", false}, {"", false},
	} {
		if got := versionAtLeast(c.have, MinServerVersion); got != c.ok {
			t.Errorf("versionAtLeast(%q) = %v, want %v", c.have, got, c.ok)
		}
	}
}

// TestOldServerIsRefused talks the NATS protocol as a 2.9 server would and checks that the
// store refuses it with a message that says what to do.
func TestOldServerIsRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = conn.Write([]byte(`INFO {"server_id":"old","version":"2.9.10","go":"go1.19","host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"proto":1,"jetstream":true}` + "\r\n"))
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "PING") {
				_, _ = conn.Write([]byte("PONG\r\n"))
			}
		}
	}()
	nc, err := nats.Connect("nats://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	err = CheckServerVersion(nc)
	if err == nil || !strings.Contains(err.Error(), "2.9.10") || !strings.Contains(err.Error(), "2.12.0 or newer") {
		t.Fatalf("old server not refused clearly: %v", err)
	}
}
