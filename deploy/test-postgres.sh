#!/usr/bin/env bash
# Make sure a PostgreSQL server is reachable for the identityd tests and print
# its DSN as the ONLY line on stdout. Diagnostics go to stderr.
#
# Order:
#   a) IDENTITYD_TEST_DATABASE_URL is set         -> print it as is
#   b) a server answers on 127.0.0.1:5432          -> use it (checked with psql)
#   c) a stopped local Debian cluster exists       -> start it (pg_ctlcluster)
#   d) otherwise                                   -> create/reuse a throwaway
#      cluster under ${TMPDIR:-/tmp}/identityd-pg on a free port 55432..55532
#      (installing Debian's postgresql first if no initdb is found and we are
#      root with apt-get).
#
# Usage:
#   bash deploy/test-postgres.sh               # print a DSN
#   bash deploy/test-postgres.sh --throwaway   # skip a)-c) (same as
#                                              # IDENTITYD_TEST_PG_FORCE_THROWAWAY=1)
#   bash deploy/test-postgres.sh --stop        # stop the throwaway cluster
#
# Idempotent: a second call reuses a throwaway cluster that is still running.
set -euo pipefail

# Everything goes to stderr except the final DSN, which is written to fd 3.
exec 3>&1 1>&2

log() { printf 'test-postgres: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
emit() {
	[[ -n "$1" ]] || die "internal error: empty DSN"
	printf '%s\n' "$1" >&3
	exit 0
}

force_throwaway="${IDENTITYD_TEST_PG_FORCE_THROWAWAY:-0}"
action=ensure
for arg in "$@"; do
	case "$arg" in
	--throwaway | --force-throwaway) force_throwaway=1 ;;
	--stop) action=stop ;;
	-h | --help)
		sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $arg" ;;
	esac
done
[[ "$force_throwaway" == "0" || "$force_throwaway" == "false" || -z "$force_throwaway" ]] && force_throwaway=0 || force_throwaway=1

# pgbin NAME: path of a PostgreSQL program, preferring the newest server
# version's bin dir (initdb, pg_ctl, postgres are not on PATH on Debian).
pgbin() {
	local name="$1" d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -rn); do
		if [[ -x "$d/$name" ]]; then
			printf '%s\n' "$d/$name"
			return 0
		fi
	done
	if command -v "$name" >/dev/null 2>&1; then
		command -v "$name"
		return 0
	fi
	return 1
}

# psql_ok DSN: true if a trivial query succeeds.
psql_ok() {
	local psql out
	psql="$(pgbin psql)" || { log "psql not found; cannot verify $1"; return 1; }
	out="$(PGCONNECT_TIMEOUT=5 "$psql" "$1" -Atc 'select 1' 2>&1)" || { log "psql check failed for $1: $out"; return 1; }
	[[ "$out" == "1" ]]
}

# ready HOST PORT: pg_isready succeeds.
ready() {
	local isready
	isready="$(pgbin pg_isready)" || return 1
	"$isready" -q -h "$1" -p "$2" -t 2 >/dev/null 2>&1
}

default_dsn="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

# ---------------------------------------------------------------- throwaway
base="${TMPDIR:-/tmp}"
base="${base%/}/identityd-pg"
run_user=""   # OS user that owns/runs the throwaway cluster ("" = current user)

# as_owner CMD...: run CMD as the cluster's OS user. fd 3 (our stdout pipe)
# and fd 8 (the lock) are closed so that a server started by pg_ctl does not
# inherit them: a caller's $(...) would otherwise wait for it forever.
as_owner() {
	if [[ -n "$run_user" ]]; then
		runuser -u "$run_user" -- "$@" 3>&- 8>&-
	else
		"$@" 3>&- 8>&-
	fi
}

# choose_base: pick the OS user and make sure $base is usable by it.
choose_base() {
	if [[ "$(id -u)" == "0" ]]; then
		command -v runuser >/dev/null 2>&1 || die "running as root but runuser is missing (PostgreSQL refuses to run as root)"
		if id -u postgres >/dev/null 2>&1; then
			run_user=postgres
		elif id -u nobody >/dev/null 2>&1; then
			run_user=nobody
		else
			die "running as root and neither user 'postgres' nor 'nobody' exists"
		fi
	fi
	mkdir -p "$base" 2>/dev/null || true
	if [[ -n "$run_user" ]]; then
		chown "$run_user" "$base" 2>/dev/null || true
		chmod 0755 "$base" 2>/dev/null || true
		if ! runuser -u "$run_user" -- test -w "$base" -a -x "$base"; then
			local alt="/tmp/identityd-pg-$run_user"
			log "$base is not usable by user $run_user; using $alt"
			base="$alt"
			mkdir -p "$base"
			chown "$run_user" "$base"
			chmod 0755 "$base"
		fi
	fi
	[[ -d "$base" && -w "$base" ]] || die "cannot create a writable directory $base"
	# Unix socket paths are limited to ~107 bytes.
	if ((${#base} > 80)); then
		die "throwaway directory path is too long for a unix socket: $base (set TMPDIR to a shorter path)"
	fi
}

port_in_use() {
	(exec 9<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1
}

throwaway_dsn() { printf 'postgres://postgres@127.0.0.1:%s/postgres?sslmode=disable' "$1"; }

# running_throwaway: if our cluster is up, echo its port.
running_throwaway() {
	local datadir="$base/data" port pg_ctl
	[[ -f "$datadir/postmaster.pid" && -f "$base/port" ]] || return 1
	pg_ctl="$(pgbin pg_ctl)" || return 1
	as_owner "$pg_ctl" -D "$datadir" status >/dev/null 2>&1 || return 1
	port="$(cat "$base/port")"
	[[ "$port" =~ ^[0-9]+$ ]] || return 1
	ready 127.0.0.1 "$port" || return 1
	printf '%s\n' "$port"
}

ensure_initdb() {
	if pgbin initdb >/dev/null 2>&1 && pgbin pg_ctl >/dev/null 2>&1; then
		return 0
	fi
	if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
		log "no initdb found; installing Debian's postgresql with apt-get"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || log "apt-get update failed (continuing)"
		apt-get install -y -qq postgresql </dev/null || die "apt-get install postgresql failed"
		pgbin initdb >/dev/null 2>&1 || die "postgresql installed but initdb still not found"
		return 0
	fi
	die "no initdb found under /usr/lib/postgresql/*/bin or PATH, and cannot install PostgreSQL (need root + apt-get). Set IDENTITYD_TEST_DATABASE_URL instead."
}

stop_throwaway() {
	choose_base
	local datadir="$base/data" pg_ctl
	if [[ ! -f "$datadir/postmaster.pid" ]]; then
		log "no throwaway cluster running in $datadir"
		return 0
	fi
	pg_ctl="$(pgbin pg_ctl)" || die "pg_ctl not found"
	as_owner "$pg_ctl" -D "$datadir" -m fast -w stop >&2
	log "stopped throwaway cluster in $datadir"
}

start_throwaway() {
	choose_base
	ensure_initdb

	# Serialise concurrent callers (e.g. parallel make jobs).
	if command -v flock >/dev/null 2>&1; then
		exec 8>"$base/lock"
		flock -w 120 8 || die "timed out waiting for lock $base/lock"
	fi

	local port
	if port="$(running_throwaway)"; then
		log "reusing throwaway cluster in $base/data on port $port"
		emit "$(throwaway_dsn "$port")"
	fi

	local initdb pg_ctl datadir="$base/data" sockdir="$base" logfile="$base/postgres.log"
	initdb="$(pgbin initdb)"
	pg_ctl="$(pgbin pg_ctl)"

	# A stale pid file from a crashed/killed server: pg_ctl start handles it,
	# but make sure the directory is still owned by the run user.
	if [[ -n "$run_user" && -d "$datadir" ]]; then
		chown -R "$run_user" "$datadir"
	fi

	if [[ ! -f "$datadir/PG_VERSION" ]]; then
		rm -rf "$datadir"
		log "initdb into $datadir${run_user:+ (as user $run_user)}"
		as_owner "$initdb" -D "$datadir" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$base/initdb.log" 2>&1 ||
			{ cat "$base/initdb.log" >&2; die "initdb failed"; }
	fi
	if [[ -n "$run_user" ]]; then
		touch "$logfile" && chown "$run_user" "$logfile"
	fi

	# Stop a half-running leftover (e.g. pid file present, port unknown).
	as_owner "$pg_ctl" -D "$datadir" status >/dev/null 2>&1 &&
		as_owner "$pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true

	local p ports=() saved=""
	# Reuse the port this cluster had (a restarted cluster keeps its DSN), then any free one.
	[[ -f "$base/port" ]] && saved="$(cat "$base/port")"
	[[ -n "$saved" ]] && ports+=("$saved")
	for ((p = 55432; p <= 55532; p++)); do ports+=("$p"); done
	for p in "${ports[@]}"; do
		port_in_use "$p" && continue
		[[ -e "$sockdir/.s.PGSQL.$p" ]] && continue
		log "starting throwaway PostgreSQL on 127.0.0.1:$p (data $datadir, log $logfile)"
		# Durability is irrelevant for a test database: trade it for speed.
		if as_owner "$pg_ctl" -D "$datadir" -l "$logfile" -w -t 30 \
			-o "-p $p -c listen_addresses=127.0.0.1 -c unix_socket_directories=$sockdir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
			start >&2; then
			local i
			for ((i = 0; i < 40; i++)); do
				ready 127.0.0.1 "$p" && break
				sleep 0.5
			done
			printf '%s\n' "$p" >"$base/port"
			local dsn
			dsn="$(throwaway_dsn "$p")"
			psql_ok "$dsn" || { tail -n 20 "$logfile" >&2 || true; die "throwaway cluster started but psql cannot connect"; }
			log "throwaway cluster ready; stop it with: bash deploy/test-postgres.sh --stop"
			emit "$dsn"
		fi
		log "start on port $p failed; last log lines:"
		tail -n 5 "$logfile" >&2 || true
	done
	die "could not start a throwaway PostgreSQL on any port 55432..55532 (see $logfile)"
}

if [[ "$action" == "stop" ]]; then
	stop_throwaway
	exit 0
fi

if [[ "$force_throwaway" == "0" ]]; then
	# (a) explicit DSN
	if [[ -n "${IDENTITYD_TEST_DATABASE_URL:-}" ]]; then
		emit "$IDENTITYD_TEST_DATABASE_URL"
	fi

	# (b) a server already on 127.0.0.1:5432
	if ready 127.0.0.1 5432; then
		if psql_ok "$default_dsn"; then
			log "using PostgreSQL on 127.0.0.1:5432"
			emit "$default_dsn"
		fi
		log "a server answers on 127.0.0.1:5432 but user postgres cannot connect; falling back to a throwaway cluster"
	else
		# (c) start the machine's stopped Debian cluster(s)
		if [[ -d /etc/postgresql ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
			for ver in $(ls /etc/postgresql 2>/dev/null); do
				[[ -d "/etc/postgresql/$ver/main" ]] || continue
				log "starting local cluster $ver/main with pg_ctlcluster"
				pg_ctlcluster --skip-systemctl-redirect "$ver" main start 3>&- || log "pg_ctlcluster $ver main start failed"
			done
			for ((i = 0; i < 40; i++)); do
				ready 127.0.0.1 5432 && break
				sleep 0.5
			done
			if ready 127.0.0.1 5432 && psql_ok "$default_dsn"; then
				log "using local cluster on 127.0.0.1:5432"
				emit "$default_dsn"
			fi
			log "local cluster not reachable on 127.0.0.1:5432 after 20 s; falling back to a throwaway cluster"
		fi
	fi
else
	log "IDENTITYD_TEST_PG_FORCE_THROWAWAY set: skipping env/5432/local-cluster checks"
fi

# (d) throwaway cluster
start_throwaway
die "no PostgreSQL available"
