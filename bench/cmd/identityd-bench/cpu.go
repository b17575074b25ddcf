package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clkTck is the kernel's USER_HZ (100 on Linux/amd64).
const clkTck = 100

// procCPU is user+system CPU seconds of one process from /proc/<pid>/stat.
func procCPU(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may contain spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clkTck
}

// postgresCPU maps every process named postgres (server and backends) to its CPU seconds.
func postgresCPU() map[int]float64 {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	out := map[int]float64{}
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm")) //nolint:gosec // /proc
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		out[pid] = procCPU(pid)
	}
	return out
}

// pgDelta is the CPU PostgreSQL used between two snapshots: processes alive at the end, minus
// what each had used at the start (0 for new ones). Backends that exited in between are lost.
func pgDelta(old, cur map[int]float64) float64 {
	var sum float64
	for pid, v := range cur {
		sum += v - old[pid]
	}
	return sum
}

// machineBusy is the CPU seconds all cores spent neither idle nor waiting for I/O since boot
// (/proc/stat), the load generator and the kernel included.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / clkTck
}

// cpuSnap is the CPU seconds used so far by a target process, NATS, PostgreSQL and the whole
// machine.
type cpuSnap struct {
	at                    time.Time
	target, nats, machine float64
	postgres              map[int]float64
}

func (b *bench) cpuNow(target *proc) cpuSnap {
	s := cpuSnap{at: time.Now(), postgres: postgresCPU(), machine: machineBusy()}
	for _, p := range b.natsProcs {
		s.nats += procCPU(p.pid())
	}
	if target != nil {
		s.target = procCPU(target.pid())
	}
	return s
}

// cpuSince reports the cores each process kept busy since s and, given the operation rate,
// the CPU milliseconds each spent per operation (steady state assumed).
func (b *bench) cpuSince(s cpuSnap, target *proc, rate float64) map[string]float64 {
	n := b.cpuNow(target)
	wall := n.at.Sub(s.at).Seconds()
	out := map[string]float64{}
	add := func(name string, used float64) {
		cores := used / wall
		out[name+"_cores"] = cores
		if rate > 0 {
			out[name+"_cpu_ms_per_op"] = cores * 1000 / rate
		}
	}
	if target != nil {
		add(target.name, n.target-s.target)
	}
	add("nats", n.nats-s.nats)
	add("postgres", pgDelta(s.postgres, n.postgres))
	// The whole machine: with the load generator and the kernel, how close the run came to
	// using every core (on a saturated machine a ratio is a CPU-cost ratio).
	add("machine", n.machine-s.machine)
	return out
}
