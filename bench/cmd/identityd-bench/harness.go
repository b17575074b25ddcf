package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// harness owns everything the run starts: processes, temp dirs, databases. Cleanups run in
// reverse order exactly once, on success, failure or interrupt.
type harness struct {
	ctx  context.Context
	root string // repository root
	tmp  string // temp dir of this run
	bin  string // built binaries

	mu       sync.Mutex
	cleanups []func()
	once     sync.Once
	procs    map[*proc]struct{}
}

func (h *harness) addCleanup(f func()) {
	h.mu.Lock()
	h.cleanups = append(h.cleanups, f)
	h.mu.Unlock()
}

// cleanup stops every process still running, then runs the registered cleanups (newest first).
func (h *harness) cleanup() {
	h.once.Do(func() {
		h.mu.Lock()
		procs := make([]*proc, 0, len(h.procs))
		for p := range h.procs {
			procs = append(procs, p)
		}
		cl := h.cleanups
		h.mu.Unlock()
		for _, p := range procs {
			p.stop()
		}
		for i := len(cl) - 1; i >= 0; i-- {
			cl[i]()
		}
	})
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// proc is a child process in its own process group (killed with its group), with its output in
// a log file under the run's temp dir.
type proc struct {
	h       *harness
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	start   time.Time
}

func (h *harness) startProc(name, bin string, args, env []string) (*proc, error) {
	logPath := filepath.Join(h.tmp, name+".log")
	lf, err := os.Create(logPath) //nolint:gosec // under our temp dir
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) //nolint:gosec // our own binaries
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = h.tmp
	// Own process group (a terminal's Ctrl-C reaches only us; we stop children in order), and
	// killed by the kernel if this orchestrator dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{h: h, name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), start: time.Now()}
	if err := cmd.Start(); err != nil {
		_ = lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	h.mu.Lock()
	h.procs[p] = struct{}{}
	h.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		_ = lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s.
func (p *proc) stop() {
	p.h.mu.Lock()
	delete(p.h.procs, p)
	p.h.mu.Unlock()
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// rss reads VmRSS and VmHWM (peak) of a process, in KiB.
func rss(pid int) (cur, peak int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			cur = n
		case "VmHWM":
			peak = n
		}
	}
	return cur, peak, sc.Err()
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return 0, fmt.Errorf("not a TCP address: %v", ln.Addr())
	}
	return addr.Port, nil
}

// waitHTTP polls url every `every` until it answers 200, the process exits, or timeout passes.
// It returns when the first 200 arrived.
func waitHTTP(ctx context.Context, p *proc, url string, every, timeout time.Duration) (time.Time, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
		resp, err := client.Get(url) //nolint:noctx // short poll
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Now(), nil
			}
		}
		if p != nil && p.exited() {
			return time.Time{}, fmt.Errorf("%s exited before answering %s: %w\n%s", p.name, url, p.err, p.tail(20))
		}
		if time.Now().After(deadline) {
			msg := ""
			if p != nil {
				msg = "\n" + p.tail(20)
			}
			return time.Time{}, fmt.Errorf("%s did not answer 200 within %s%s", url, timeout, msg)
		}
		time.Sleep(every)
	}
}

// waitTCP waits for a TCP port to accept connections.
func waitTCP(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %w\n%s", p.name, p.err, p.tail(20))
		}
		if time.Now().After(deadline) {
			return errors.New(addr + " not accepting connections")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runCmd runs a short-lived command to completion (killed with the context) and returns its
// stdout; stderr goes to a log file under the temp dir.
func (h *harness) runCmd(ctx context.Context, name, bin string, args, env []string) ([]byte, error) {
	logPath := filepath.Join(h.tmp, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644) //nolint:gosec // temp dir
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.CommandContext(ctx, bin, args...) //nolint:gosec // our own binaries
	if env != nil {
		cmd.Env = env
	}
	cmd.Dir = h.root
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.Output()
	if err != nil {
		b, _ := os.ReadFile(logPath) //nolint:gosec // temp dir
		tail := string(b)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail)
	}
	return out, nil
}
