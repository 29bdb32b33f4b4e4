#!/usr/bin/env bash
# Empath vs Postfix (vs Exim): load generator -> MTA -> smtp-sink, on
# loopback, with each MTA's full durability (each fsyncs the queue file
# before the 250). See bench/README.md. Needs root, Debian's postfix package
# (smtp-source, smtp-sink, and the Postfix being compared), python3,
# util-linux (unshare, for Exim) and a Rust toolchain.
#
# Environment (defaults in brackets):
#   CASES [legacy]       what to measure, any of (in this order):
#                          5k-reuse    5120 B, each CONCURRENCY, smtp-source -d
#                          5k-noreuse  5120 B, each CONCURRENCY, one
#                                      connection per message
#                          100k        102400 B, c=10, one connection per message
#                          1m          1048576 B, c=10, one connection per
#                                      message; MB/s against `dd` on the same
#                                      filesystem in the same run
#                          rcpt10      5120 B, c=10, reuse, 10 recipients per
#                                      message over 3 domains, each domain
#                                      its own destination (own smtp-sink)
#                          all         all of the above
#                          legacy      SIZE at each CONCURRENCY with REUSE
#                                      (what the script measured before)
#   SYSTEMS ["empath postfix"]  any of empath, postfix, exim (Exim is
#                        downloaded and unpacked privately, see EXIM_CACHE)
#   DIRECT [1]           1: also measure each case without an MTA (the load
#                        generator straight into smtp-sink), the no-MTA limit
#   N [10000]            messages per run (5 KB cases and legacy)
#   N_100K [N/4]  N_1M [N/20]  N_RCPT [N/2]   messages per run of those cases
#   SIZE [5120]  CONCURRENCY ["10 50"]  REUSE [1]   legacy case; CONCURRENCY
#                        is also the list for the 5k cases
#   DD_MB [512]          MiB written by the disk write test (1m case)
#   SMOKE [0]            1: a quick check that everything runs: N=500,
#                        N_1M=20, WARMUP=20, DD_MB=64 unless set
#   STRICT [SMOKE]       1: exit with status 1 (after the report) if any
#                        run failed: the sender failed, the sinks did not
#                        get every message, a queue did not empty, or the
#                        sinks counted other than one transaction per
#                        message and destination (as .ci/bench-smoke runs
#                        it in CI)
#   WARMUP [200]         messages sent once to each MTA before measuring
#   REPEAT [1]           runs of each case and system, interleaved; every
#                        figure is from the median run by end-to-end time
#                        (of an even number, the slower middle one), and
#                        all runs' times are listed under the report
#   PIN [0]              1: the MTA runs on the first half of the CPUs and
#                        the load generator, the sinks and the watcher on
#                        the other half (taskset), so that neither takes
#                        the other's CPU time; the kernel's threads run
#                        anywhere. Needs 2 CPUs or more
#   TIMEOUT [900]        seconds allowed per run before it counts as failed
#   DRAIN_WAIT [30]      seconds to wait after a run for the MTA's queue to
#                        empty (so that no run counts another's messages)
#   BASE_PORT [25300]    ports BASE..BASE+14 on 127.0.0.1
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   EMPATH_BIN_DIR [target/release]  where the empath binaries are (e.g.
#                        a build with frame pointers, see bench/profile.sh)
#   KEEP [0]             1: keep the work dir (configs, logs, spools)
#   WORK_PARENT [/var/tmp]  where the work dir (all spools) is made; it
#                        must be a real disk filesystem, or fsync means nothing
#   EXIM_CACHE [WORK_PARENT/empath-bench-exim]  where Exim's Debian packages
#                        are downloaded (apt-get download) and unpacked
#   EMPATH_WRAPPER []    command put in front of `empath`, for profiling,
#                        e.g. "strace -f -c -o /tmp/empath.strace"
set -euo pipefail

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    N=${N:-500}
    N_1M=${N_1M:-20}
    WARMUP=${WARMUP:-20}
    DD_MB=${DD_MB:-64}
fi
STRICT=${STRICT:-$SMOKE}
N=${N:-10000}
N_100K=${N_100K:-$((N / 4))}
N_1M=${N_1M:-$((N / 20))}
N_RCPT=${N_RCPT:-$((N / 2))}
SIZE=${SIZE:-5120}
CONCURRENCY=${CONCURRENCY:-"10 50"}
REUSE=${REUSE:-1}
CASES=${CASES:-legacy}
SYSTEMS=${SYSTEMS:-"empath postfix"}
DIRECT=${DIRECT:-1}
DD_MB=${DD_MB:-512}
WARMUP=${WARMUP:-200}
REPEAT=${REPEAT:-1}
PIN=${PIN:-0}
if ! [[ "$REPEAT" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: REPEAT must be a whole number of runs, 1 or more (not '$REPEAT')" >&2
    exit 2
fi
TIMEOUT=${TIMEOUT:-900}
DRAIN_WAIT=${DRAIN_WAIT:-30}
BASE_PORT=${BASE_PORT:-25300}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
EXIM_CACHE=${EXIM_CACHE:-$WORK_PARENT/empath-bench-exim}
read -r -a EMPATH_WRAPPER <<<"${EMPATH_WRAPPER:-}"
# Command prefixes that put the MTA and the load on their CPUs (PIN=1).
MTA_PIN=()
LOAD_PIN=()
if [ "$PIN" = 1 ]; then
    cpus=$(nproc)
    if [ "$cpus" -lt 2 ] || ! command -v taskset >/dev/null; then
        echo "bench: PIN=1 needs 2 CPUs or more and taskset (util-linux)" >&2
        exit 2
    fi
    span() { if [ "$1" = "$2" ]; then echo "$1"; else echo "$1-$2"; fi; }
    MTA_CPUS=$(span 0 $((cpus / 2 - 1)))
    LOAD_CPUS=$(span $((cpus / 2)) $((cpus - 1)))
    MTA_PIN=(taskset -c "$MTA_CPUS")
    LOAD_PIN=(taskset -c "$LOAD_CPUS")
fi

# Both MTAs may run this many deliveries to one destination at once
# (Postfix's default_destination_concurrency_limit), and this many in all
# (Postfix's default_process_limit bounds its smtp processes).
DEST_CONCURRENCY=20
TOTAL_CONCURRENCY=100
# The rcpt10 case: recipient i of a message is user<i>@ domain i mod 3,
# and each domain is routed to its own sink (a destination of its own for
# every MTA's scheduler). The other cases send to user@sink.test (sink A).
RCPT_DOMAINS="d1.test,d2.test,d3.test"
RCPT_COUNT=10

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCHTOOL=$ROOT/bench/smtpbench.py
EMPATH_BIN_DIR=${EMPATH_BIN_DIR:-$ROOT/target/release}
WORK=$(mktemp -d "$WORK_PARENT/empath-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
SINKS=() # the current run's smtp-sinks
WATCHER=""
POSTFIX_CONF=""
EXIM_PIDFILE=""
CG_KIND=""
CG_DIR=""

log() { printf '%s\n' "$*" >&2; }
# What went wrong in the runs, each with its case: reported at the end
# (and the exit status with STRICT=1). CURRENT names the run.
FAILURES=()
CURRENT=""
failed() {
    log "bench: $*"
    FAILURES+=("${CURRENT:+$CURRENT: }$*")
}
die() { log "bench: $*"; exit 1; }

# Ports: a block of four per system (its smtpd, then sinks A, B, C), and
# three sinks for the runs without an MTA.
ports_of() { # system -> "smtpd sinkA sinkB sinkC"
    local i
    case $1 in
        empath) i=0 ;;
        postfix) i=4 ;;
        exim) i=8 ;;
        direct) i=11 ;; # no smtpd: BASE+11 is never listened on
        *) die "unknown system $1" ;;
    esac
    echo "$((BASE_PORT + i)) $((BASE_PORT + i + 1)) $((BASE_PORT + i + 2)) $((BASE_PORT + i + 3))"
}

# ---------------------------------------------------------------- CPU time
# Each MTA runs in its own cgroup, so that its CPU time covers every
# process it ever had (Exim's delivery processes are not its daemon's
# children for long). cgroup v2 cpu.stat usage_usec, or v1 cpuacct.usage.
cg_init() {
    local base=""
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        CG_KIND=v2 base=/sys/fs/cgroup
    elif [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
        CG_KIND=v2 base=/sys/fs/cgroup/unified
    elif [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then
        CG_KIND=v1 base=/sys/fs/cgroup/cpuacct
    elif [ -f /sys/fs/cgroup/cpu,cpuacct/cpuacct.usage ]; then
        CG_KIND=v1 base=/sys/fs/cgroup/cpu,cpuacct
    fi
    if [ -n "$base" ] && mkdir "$base/empath-bench-$$" 2>/dev/null; then
        CG_DIR=$base/empath-bench-$$
        log "bench: CPU time from cgroup $CG_KIND ($CG_DIR)"
    else
        CG_KIND=""
        log "bench: no cgroup to account CPU time in; CPU ms/msg will be '-'"
    fi
}
cg_make() { [ -z "$CG_DIR" ] || mkdir -p "$CG_DIR/$1"; }
# Moves the calling (sub)shell into the system's cgroup; what it execs and
# forks stays there.
cg_enter() { [ -z "$CG_DIR" ] || echo "$BASHPID" >"$CG_DIR/$1/cgroup.procs"; }
cg_usage_ns() { # system -> "total kernel" nanoseconds of CPU, or "- -"
    local dir
    [ -n "$CG_DIR" ] || { echo - -; return; }
    dir=$CG_DIR/$1
    [ -d "$dir" ] || { echo - -; return; }
    if [ "$CG_KIND" = v2 ]; then
        awk '$1 == "usage_usec" { t = $2 } $1 == "system_usec" { s = $2 }
            END { printf "%.0f %.0f\n", t * 1000, s * 1000 }' "$dir/cpu.stat"
    else
        printf '%s %s\n' "$(cat "$dir/cpuacct.usage")" "$(cat "$dir/cpuacct.usage_sys" 2>/dev/null || echo -)"
    fi
}
cg_procs() { [ -z "$CG_DIR" ] || cat "$CG_DIR/$1/cgroup.procs" 2>/dev/null || true; }
cg_remove() {
    [ -n "$CG_DIR" ] || return 0
    local d
    for d in "$CG_DIR"/*/; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null
    done
    rmdir "$CG_DIR" 2>/dev/null || log "bench: could not remove $CG_DIR"
}

# Busy and total jiffies of the whole machine, for its load during a run.
cpu_jiffies() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
# Commits of the work dir's filesystem journal so far (jbd2, ext3/ext4),
# or "-": each fsync waits for one, and on this kind of VM each costs a
# cache flush of the disk. JOURNAL_INFO is set once the work dir exists.
JOURNAL_INFO=""
journal_commits() {
    if [ -n "$JOURNAL_INFO" ] && [ -r "$JOURNAL_INFO" ]; then
        awk 'NR == 1 { print $1 }' "$JOURNAL_INFO"
    else
        echo -
    fi
}

cleanup() {
    local status=$?
    set +e
    if [ -n "$POSTFIX_CONF" ]; then
        postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1
    fi
    if [ -n "$EXIM_PIDFILE" ] && [ -s "$EXIM_PIDFILE" ]; then
        kill "$(cat "$EXIM_PIDFILE")" 2>/dev/null
    fi
    for pid in "${PIDS[@]}" "${SINKS[@]}" $WATCHER; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}" "${SINKS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    # What is left in an MTA's cgroup (e.g. an Exim delivery process) was
    # started by this script; the cgroups can go only once they are empty.
    if [ -n "$CG_DIR" ]; then
        for system in empath postfix exim; do
            for pid in $(cg_procs "$system"); do kill "$pid" 2>/dev/null; done
        done
        sleep 0.5
        for system in empath postfix exim; do
            for pid in $(cg_procs "$system"); do kill -9 "$pid" 2>/dev/null; done
        done
        sleep 0.2
        cg_remove
    fi
    if [ "$KEEP" = 1 ] || [ $status -ne 0 ]; then
        log "bench: work dir kept at $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { command -v "$1" >/dev/null || die "$1 not found (${2:-})"; }
need smtp-source "apt-get install postfix"
need smtp-sink "apt-get install postfix"
need python3 "apt-get install python3"
[ "$(id -u)" = 0 ] || die "run as root (Postfix and Exim need it)"
for port in $(seq "$BASE_PORT" $((BASE_PORT + 14))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; set BASE_PORT"
    fi
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

wait_port() { # port seconds
    for _ in $(seq $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after $2 s"
}

# ---------------------------------------------------------------- Empath
start_empath() {
    if [ "$SKIP_BUILD" != 1 ]; then
        log "bench: cargo build --release"
        (cd "$ROOT" && cargo build --release --workspace --bins >&2)
    fi
    local dir=$WORK/empath smtp a b c
    read -r smtp a b c <<<"$(ports_of empath)"
    mkdir -p "$dir"
    cat >"$dir/empath.config.ron" <<RON
Empath(
    hostname: "bench.empath.test",
    smtp_controller: (listeners: [{ socket: "127.0.0.1:$smtp" }]),
    spool: (path: "$dir/spool"),
    delivery: (
        max_concurrent_deliveries: $TOTAL_CONCURRENCY,
        max_concurrency_per_domain: $DEST_CONCURRENCY,
        rate_limit: (messages_per_second: 1000000.0, burst_size: 1000000),
        domains: {
            "sink.test": (mx_override: "127.0.0.1:$a"),
            "d1.test": (mx_override: "127.0.0.1:$a"),
            "d2.test": (mx_override: "127.0.0.1:$b"),
            "d3.test": (mx_override: "127.0.0.1:$c"),
        },
    ),
    health: (enabled: false),
    control_socket: None,
    // Like the system tests: a throwaway spool, no dedicated user needed.
    allow_root: true,
)
RON
    cg_make empath
    (
        cg_enter empath
        exec "${MTA_PIN[@]}" "${EMPATH_WRAPPER[@]}" "$EMPATH_BIN_DIR/empath" --config "$dir/empath.config.ron" \
            >"$dir/empath.log" 2>&1 </dev/null
    ) &
    PIDS+=($!)
    wait_port "$smtp" 30
    # With a wrapper, $! is the wrapper's pid: find the master itself (by
    # this run's unique config path) so that cleanup stops it too.
    local master
    master=$(pgrep -f -x -- "$EMPATH_BIN_DIR/empath --config $dir/empath.config.ron" | head -1 || true)
    [ -n "$master" ] && PIDS=("$master" "${PIDS[@]}")
}
queue_empath() { find "$WORK/empath/spool/incoming" "$WORK/empath/spool/active" "$WORK/empath/spool/deferred" -type f 2>/dev/null | wc -l; }

# ---------------------------------------------------------------- Postfix
start_postfix() {
    local dir=$WORK/postfix smtp a b c
    read -r smtp a b c <<<"$(ports_of postfix)"
    POSTFIX_CONF=$dir/etc
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    chown postfix "$dir/data"
    cp /etc/postfix/master.cf "$dir/etc/master.cf"
    # A private instance: its own queue, loopback only, everything relayed
    # to its sinks, default durability (fsync before 250).
    cat >"$dir/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$a
transport_maps = inline:{ d1.test=smtp:[127.0.0.1]:$a, d2.test=smtp:[127.0.0.1]:$b, d3.test=smtp:[127.0.0.1]:$c }
default_destination_concurrency_limit = $DEST_CONCURRENCY
default_process_limit = $TOTAL_CONCURRENCY
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
CF
    # smtpd on our port instead of 25; no chroot (the queue is elsewhere).
    postconf -c "$dir/etc" -M# smtp/inet
    postconf -c "$dir/etc" -M "127.0.0.1:$smtp/inet=127.0.0.1:$smtp inet n - n - - smtpd"
    postconf -c "$dir/etc" -F '*/*/chroot = n'
    cg_make postfix
    if ! (cg_enter postfix; exec "${MTA_PIN[@]}" postfix -c "$dir/etc" start) >&2; then
        # Postfix prints its errors only to a tty or to the log.
        command -v script >/dev/null && script -qc "postfix -c $dir/etc check" /dev/null >&2
        die "postfix did not start; see $dir/maillog"
    fi
    wait_port "$smtp" 30
}
queue_postfix() {
    local q=$WORK/postfix/queue
    find "$q/maildrop" "$q/incoming" "$q/active" "$q/deferred" "$q/hold" -type f 2>/dev/null | wc -l
}

# ---------------------------------------------------------------- Exim
# Debian's exim4-daemon-light conflicts with postfix (both are the
# mail-transport-agent), so it is not installed: its package (and any
# library package it needs that is missing) is downloaded with apt-get and
# unpacked into EXIM_CACHE. The binary looks up its compiled-in user
# (Debian-exim) when it starts, so it runs in a private mount namespace
# whose /etc/passwd and /etc/group have that user; the host's are not
# touched. Run with -C (our config, not in its TRUSTED_CONFIG_LIST), it
# drops root for the Exim user, which is all a relay needs.
EXIM_BIN=""
EXIM_LIBS=""
fetch_exim() {
    local root=$EXIM_CACHE/root
    EXIM_BIN=$root/usr/sbin/exim4
    EXIM_LIBS=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu
    if [ ! -x "$EXIM_BIN" ]; then
        need apt-get "Debian's apt"
        log "bench: downloading exim4-daemon-light into $EXIM_CACHE"
        mkdir -p "$EXIM_CACHE/debs" "$root"
        # _apt (apt's download user) must be able to write there.
        chown _apt "$EXIM_CACHE/debs" 2>/dev/null || true
        local pkgs=(exim4-daemon-light) dep
        # Its library dependencies and theirs (one level), where missing.
        for dep in $( (apt-cache depends exim4-daemon-light; apt-cache depends libgnutls-dane0) 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }' | sort -u); do
            dpkg -s "$dep" 2>/dev/null | grep -q '^Status: install ok installed' || pkgs+=("$dep")
        done
        if ! (cd "$EXIM_CACHE/debs" && apt-get download "${pkgs[@]}" >&2 2>"$EXIM_CACHE/download.log"); then
            log "bench: apt-get download failed; trying after apt-get update"
            apt-get update -qq >&2
            (cd "$EXIM_CACHE/debs" && apt-get download "${pkgs[@]}" >&2) || die "cannot download ${pkgs[*]}"
        fi
        local deb
        for deb in "$EXIM_CACHE"/debs/*.deb; do dpkg -x "$deb" "$root"; done
        # We run it as root; no set-uid copy is left lying around.
        chmod u-s "$EXIM_BIN"
    fi
    if LD_LIBRARY_PATH=$EXIM_LIBS ldd "$EXIM_BIN" | grep -q 'not found'; then
        die "Exim lacks libraries: $(LD_LIBRARY_PATH=$EXIM_LIBS ldd "$EXIM_BIN" | grep 'not found' | tr -s ' \n' ' ')"
    fi
}

start_exim() {
    fetch_exim
    local dir=$WORK/exim smtp a b c uid
    read -r smtp a b c <<<"$(ports_of exim)"
    mkdir -p "$dir/spool" "$dir/log"
    # A uid and gid that the host does not use, for the namespace's Debian-exim.
    for uid in $(seq 64990 -1 64900); do
        getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null || break
    done
    cp /etc/passwd "$dir/passwd"
    cp /etc/group "$dir/group"
    grep -q '^Debian-exim:' "$dir/passwd" ||
        echo "Debian-exim:x:$uid:$uid:Exim (bench):/nonexistent:/usr/sbin/nologin" >>"$dir/passwd"
    grep -q '^Debian-exim:' "$dir/group" || echo "Debian-exim:x:$uid:" >>"$dir/group"
    uid=$(awk -F: '$1 == "Debian-exim" { print $3 }' "$dir/passwd")
    chown -R "$uid:$uid" "$dir/spool" "$dir/log"
    EXIM_PIDFILE=$dir/exim.pid
    # A smarthost relay at Exim's defaults (spool files fsynced before the
    # 250, a message log per message, a delivery process forked per
    # message), except: no limit on SMTP connections (the default, 20,
    # refuses the c=50 runs; Postfix allows 100), a listen backlog like
    # the others', no queueing of the messages after the 10th of a
    # connection and no limit on messages per connection (the default,
    # 1000, ends smtp-source -d), no ident or DNS lookups of loopback
    # clients.
    cat >"$dir/exim.conf" <<CONF
exim_path = $EXIM_BIN
keep_environment = LD_LIBRARY_PATH
primary_hostname = bench.exim.test
spool_directory = $dir/spool
log_file_path = $dir/log/%slog
pid_file_path = $EXIM_PIDFILE
daemon_smtp_ports = $smtp
local_interfaces = 127.0.0.1
tls_advertise_hosts =
host_lookup =
rfc1413_hosts =
smtp_accept_max = $TOTAL_CONCURRENCY
smtp_connect_backlog = 1024
smtp_accept_queue_per_connection = 0
smtp_accept_max_per_connection = 0
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
  accept hosts = 127.0.0.0/8
  deny message = relay not permitted

begin routers
sinks:
  driver = manualroute
  transport = remote_smtp
  route_list = sink.test 127.0.0.1::$a ; d1.test 127.0.0.1::$a ; d2.test 127.0.0.1::$b ; d3.test 127.0.0.1::$c
  self = send

begin transports
remote_smtp:
  driver = smtp
  allow_localhost
  hosts_avoid_tls = *

begin retry
* * F,1h,15s
CONF
    cg_make exim
    (
        cg_enter exim
        export LD_LIBRARY_PATH=$EXIM_LIBS
        # -bd daemonizes; the namespace lives on with it.
        # shellcheck disable=SC2016 # expanded by the inner sh
        exec "${MTA_PIN[@]}" unshare -m sh -c 'mount --make-rprivate / &&
            mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group &&
            exec "$3" -C "$4" -bd -q30s' sh "$dir/passwd" "$dir/group" "$EXIM_BIN" "$dir/exim.conf"
    ) >&2 || die "exim did not start; see $dir/log/paniclog"
    wait_port "$smtp" 30
}
queue_exim() { find "$WORK/exim/spool/input" -name '*-H' 2>/dev/null | wc -l; }
queue_direct() { echo 0; }
start_direct() { :; }

# ---------------------------------------------------------------- a run
# The growth of a counter from BEFORE to AFTER, or "-" if either is not known.
delta() { # BEFORE AFTER
    if [ -n "$1" ] && [ -n "$2" ] && [ "$1" != - ] && [ "$2" != - ]; then
        echo $(($2 - $1))
    else
        echo -
    fi
}

# run_once SYSTEM COUNT SIZE SESSIONS REUSE RCPTS
#   sets RUN_RESULT="accepted_s e2e_s cpu_ns busy_percent journal_commits kernel_cpu_ns"
#   ("-" for what failed or is not known), and adds what went wrong, if
#   anything, to FAILURES. Not called in a subshell, so that SINKS and die work.
run_once() {
    local system=$1 count=$2 size=$3 sessions=$4 reuse=$5 rcpts=$6
    local dir=$WORK/runs/$system-n$count-s$size-c$sessions-r$reuse-t$rcpts-$RANDOM
    local smtp a b c
    read -r smtp a b c <<<"$(ports_of "$system")"
    [ "$system" = direct ] && smtp=$a
    mkdir -p "$dir"
    # Sinks: one, or one per domain when an MTA spreads the recipients
    # (straight from the client, all recipients go to sink A in one
    # transaction). smtp-sink -c writes its counters to a file, which
    # smtpbench.py watches; it is stopped only once the MTA's queue is empty,
    # so that every delivery gets its reply.
    local sink_ports=("$a") waits=() port
    [ "$rcpts" -gt 1 ] && [ "$system" != direct ] && sink_ports=("$a" "$b" "$c")
    for port in "${sink_ports[@]}"; do
        "${LOAD_PIN[@]}" smtp-sink -c -u nobody -m 512 "127.0.0.1:$port" 1024 \
            >"$dir/sink-$port.out" 2>&1 </dev/null &
        SINKS+=($!)
        waits+=("$dir/sink-$port.out=$count")
    done
    for port in "${sink_ports[@]}"; do wait_port "$port" 10; done
    local sender
    if [ "$rcpts" = 1 ]; then
        sender=(smtp-source -s "$sessions" -m "$count" -l "$size" -f bench@client.test -t user@sink.test)
        [ "$reuse" = 1 ] && sender+=(-d)
        sender+=("127.0.0.1:$smtp")
    else
        sender=(python3 "$BENCHTOOL" send --port "$smtp" --sessions "$sessions" --count "$count"
            --size "$size" --rcpts "$rcpts" --domains "$RCPT_DOMAINS")
        [ "$reuse" = 1 ] && sender+=(--reuse)
    fi
    local cpu0 cpu1 sys0 sys1 busy0 total0 busy1 total1 commits0 commits1 start end_accept acc="-" e2e="-"
    # The watcher runs from before the first message, so that its start-up
    # is not counted and it notes the very moment the sinks are done.
    "${LOAD_PIN[@]}" python3 "$BENCHTOOL" wait --timeout $((2 * TIMEOUT)) "${waits[@]}" >"$dir/delivered" 2>"$dir/wait.err" &
    WATCHER=$!
    read -r cpu0 sys0 < <(cg_usage_ns "$system")
    commits0=$(journal_commits)
    read -r busy0 total0 < <(cpu_jiffies)
    start=$(now)
    if timeout "$TIMEOUT" "${LOAD_PIN[@]}" "${sender[@]}" >"$dir/source.out" 2>&1; then
        end_accept=$(now)
        acc=$(elapsed "$start" "$end_accept")
        if wait "$WATCHER"; then
            e2e=$(elapsed "$start" "$(cat "$dir/delivered")")
        else
            failed "$system: the sinks did not get all $count messages in time: $(cat "$dir/wait.err")"
        fi
    else
        failed "the sender failed ($system, c=$sessions): $(tail -3 "$dir/source.out")"
        kill "$WATCHER" 2>/dev/null || true
        wait "$WATCHER" 2>/dev/null || true
    fi
    WATCHER=""
    # Let the queue empty (deliveries in flight get their replies), so that
    # the next run's sinks count only their own messages, and the CPU time
    # covers all the work these messages caused.
    local left
    left=$("queue_$system")
    for _ in $(seq $((DRAIN_WAIT * 10))); do
        left=$("queue_$system")
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    [ "$left" = 0 ] || failed "$system: $left messages still queued $DRAIN_WAIT s after the run; later runs may count them"
    read -r cpu1 sys1 < <(cg_usage_ns "$system")
    commits1=$(journal_commits)
    read -r busy1 total1 < <(cpu_jiffies)
    local got
    got=$(python3 "$BENCHTOOL" count "${waits[@]%=*}")
    if [ "$e2e" != - ] && [ "$got" != $((count * ${#sink_ports[@]})) ]; then
        failed "$system: the sinks counted $got transactions, expected $((count * ${#sink_ports[@]})) (one per message and destination)"
    fi
    kill "${SINKS[@]}" 2>/dev/null || true
    wait "${SINKS[@]}" 2>/dev/null || true
    SINKS=()
    local cpu kernel commits
    cpu=$(delta "$cpu0" "$cpu1")
    kernel=$(delta "$sys0" "$sys1")
    commits=$(delta "$commits0" "$commits1")
    RUN_RESULT="$acc $e2e $cpu $(awk -v b="$((busy1 - busy0))" -v t="$((total1 - total0))" \
        'BEGIN { if (t > 0) printf "%.0f", 100 * b / t; else print "-" }') $commits $kernel"
}

# Sequential write rate of the work dir's filesystem (MB/s, 10^6 bytes),
# with direct I/O and an fsync at the end, like a spool's data.
disk_rate() {
    local start end
    start=$(now)
    dd if=/dev/zero of="$WORK/dd.test" bs=1M count="$DD_MB" oflag=direct conv=fsync status=none
    end=$(now)
    rm -f "$WORK/dd.test"
    awk -v mb="$DD_MB" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", mb * 1048576 / 1e6 / (b - a) }'
}

# ---------------------------------------------------------------- cases
# One line per run: label size sessions reuse rcpts count
expand_cases() {
    local case c
    for case in "$@"; do
        case $case in
            all) expand_cases 5k-reuse 5k-noreuse 100k 1m rcpt10 ;;
            legacy) for c in $CONCURRENCY; do echo "${SIZE}B-c$c-reuse$REUSE $SIZE $c $REUSE 1 $N"; done ;;
            5k-reuse) for c in $CONCURRENCY; do echo "5k-reuse-c$c 5120 $c 1 1 $N"; done ;;
            5k-noreuse) for c in $CONCURRENCY; do echo "5k-noreuse-c$c 5120 $c 0 1 $N"; done ;;
            100k) echo "100k-noreuse-c10 102400 10 0 1 $N_100K" ;;
            1m) echo "1m-noreuse-c10 1048576 10 0 1 $N_1M" ;;
            rcpt10) echo "rcpt10-reuse-c10 5120 10 1 $RCPT_COUNT $N_RCPT" ;;
            *) die "unknown case '$case' (5k-reuse 5k-noreuse 100k 1m rcpt10 all legacy)" ;;
        esac
    done
}
for case in $CASES; do
    case $case in all | legacy | 5k-reuse | 5k-noreuse | 100k | 1m | rcpt10) ;;
        *) die "unknown case '$case' (5k-reuse 5k-noreuse 100k 1m rcpt10 all legacy)" ;;
    esac
done
# shellcheck disable=SC2086 # CASES is a list
mapfile -t RUNS < <(expand_cases $CASES)
[ "${#RUNS[@]}" -gt 0 ] || die "no cases"
for system in $SYSTEMS; do
    case $system in empath | postfix | exim) ;; *) die "unknown system '$system' (empath postfix exim)" ;; esac
done
ALL_SYSTEMS=$SYSTEMS
[ "$DIRECT" = 1 ] && ALL_SYSTEMS="$SYSTEMS direct"

log "bench: CASES=\"$CASES\" SYSTEMS=\"$SYSTEMS\" DIRECT=$DIRECT N=$N N_100K=$N_100K N_1M=$N_1M N_RCPT=$N_RCPT"
# The filesystem decides what an fsync costs: say which one, and for ext4
# whether it has a journal (without one, fsync is cheaper but creating
# files right after deleting thousands is not: see bench/README.md).
filesystem() {
    local type source device journal=""
    type=$(findmnt -no FSTYPE -T "$1" 2>/dev/null) || type=$(stat -f -c %T "$1")
    source=$(findmnt -no SOURCE -T "$1" 2>/dev/null) || source=""
    device=$(readlink -f "$source" 2>/dev/null) || device=$source
    device=${device##*/}
    # A journaled ext3/ext4 has a jbd2 entry named after its device.
    if [ -d "/proc/fs/ext4/$device" ]; then
        if compgen -G "/proc/fs/jbd2/$device-*" >/dev/null; then
            journal=" with a journal"
        else
            journal=" without a journal"
        fi
    fi
    echo "$type$journal${source:+ ($source)}"
}
# The jbd2 statistics of the filesystem under DIR, if it has a journal.
journal_info_of() {
    local device
    device=$(readlink -f "$(findmnt -no SOURCE -T "$1" 2>/dev/null)" 2>/dev/null) || return 0
    compgen -G "/proc/fs/jbd2/${device##*/}-*/info" | head -1 || true
}
JOURNAL_INFO=$(journal_info_of "$WORK")
log "bench: work dir $WORK on $(filesystem "$WORK"); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cg_init
for system in $SYSTEMS; do
    "start_$system"
    if [ "$WARMUP" -gt 0 ]; then
        log "bench: warming up $system with $WARMUP messages"
        CURRENT="warm-up"
        run_once "$system" "$WARMUP" 5120 10 1 1
    fi
done

# The run whose end-to-end time is the median of one case and system's
# (the slower middle one of an even number); a failed run ("-") counts as
# the slowest.
median_run() { # newline-separated RUN_RESULTs -> one of them
    printf '%s' "$1" | awk '{ print ($2 == "-" ? 1e18 : $2) "\t" $0 }' | sort -g -k1,1 |
        awk -F '\t' '{ line[NR] = $2 } END { print line[int(NR / 2) + 1] }'
}

declare -A RESULT TRIES
DD_RATE=""
LOADS=()
for run in "${RUNS[@]}"; do
    read -r label size sessions reuse rcpts count <<<"$run"
    if [ "$size" -ge 1048576 ] && [ -z "$DD_RATE" ]; then
        DD_RATE=$(disk_rate)
        log "bench: dd: $DD_MB MiB with oflag=direct conv=fsync: $DD_RATE MB/s"
    fi
    # Interleaved, so that all see the same (shared) machine.
    for try in $(seq "$REPEAT"); do
        for system in $ALL_SYSTEMS; do
            log "bench: $label: $system, $count messages$([ "$REPEAT" = 1 ] || echo ", run $try of $REPEAT")"
            CURRENT=$label
            run_once "$system" "$count" "$size" "$sessions" "$reuse" "$rcpts"
            TRIES[$label/$system]+="$RUN_RESULT"$'\n'
            log "bench:   accepted in / delivered in (s) / CPU ns / machine busy % / journal commits / kernel CPU ns: $RUN_RESULT"
        done
    done
    for system in $ALL_SYSTEMS; do
        RESULT[$label/$system]=$(median_run "${TRIES[$label/$system]}")
    done
    LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
done

# ---------------------------------------------------------------- report
fmt() { # awk expression over a b -> number or "-"
    awk -v a="$1" -v b="$2" -v d="$3" "BEGIN { if (a == \"-\" || b == \"-\" || a + 0 <= 0 || b + 0 <= 0) print \"-\"; else printf \"%.${4:-0}f\", $5 }"
}
times() { [ "$1" = - ] && echo - || echo "$1x"; }

printf '\n%s, %s CPUs, load average %s at the start; after each case: %s\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "${LOADS[*]}"
[ "$PIN" = 1 ] && printf 'PIN=1: the MTAs on CPU %s, the load generator and the sinks on CPU %s\n' "$MTA_CPUS" "$LOAD_CPUS"
[ -n "$DD_RATE" ] && printf 'dd (%s MiB, oflag=direct conv=fsync, same filesystem): %s MB/s\n' "$DD_MB" "$DD_RATE"
printf '\n| case | system | N | accepted msg/s | e2e msg/s | e2e MB/s | CPU ms/msg | of it in the kernel | machine busy | e2e / no-MTA | journal commits/msg |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for run in "${RUNS[@]}"; do
    read -r label size _ _ _ count <<<"$run"
    direct_e2e=-
    [ "$DIRECT" = 1 ] && read -r _ direct_e2e _ _ <<<"${RESULT[$label/direct]}"
    for system in $ALL_SYSTEMS; do
        read -r acc e2e cpu busy commits kernel <<<"${RESULT[$label/$system]}"
        ratio=-
        [ "$system" != direct ] && ratio=$(fmt "$direct_e2e" "$e2e" "" 0 '100 * a / b')
        [ "$ratio" != - ] && ratio+=%
        [ "$busy" != - ] && busy+=%
        share=-
        [ "$system" != direct ] && share=$(fmt "${kernel:--}" "$cpu" "" 0 '100 * a / b')
        [ "$share" != - ] && share+=%
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$system" "$count" \
            "$(fmt "$count" "$acc" "" 0 'a / b')" "$(fmt "$count" "$e2e" "" 0 'a / b')" \
            "$(fmt "$count" "$e2e" "$size" 1 'a * d / 1e6 / b')" \
            "$(if [ "$system" = direct ]; then echo -; else fmt "$cpu" "$count" "" 3 'a / 1e6 / b'; fi)" \
            "$share" "$busy" "$ratio" "$(fmt "${commits:--}" "$count" "" 2 'a / b')"
    done
done

peers=""
for p in postfix exim; do [[ " $SYSTEMS " == *" $p "* ]] && peers+=" $p"; done
if [[ " $SYSTEMS " == *" empath "* ]] && [ -n "$peers" ]; then
    printf '\n| case |'
    for p in $peers; do printf ' Empath/%s e2e | Empath/%s CPU per msg |' "${p^}" "${p^}"; done
    printf '\n|---|'
    for p in $peers; do printf -- '---|---|'; done
    printf '\n'
    for run in "${RUNS[@]}"; do
        read -r label size _ _ _ count <<<"$run"
        read -r _ ee ec _ <<<"${RESULT[$label/empath]}"
        printf '| %s |' "$label"
        for p in $peers; do
            read -r _ pe pc _ <<<"${RESULT[$label/$p]}"
            printf ' %s | %s |' "$(times "$(fmt "$pe" "$ee" "" 2 'a / b')")" "$(times "$(fmt "$ec" "$pc" "" 2 'a / b')")"
        done
        printf '\n'
    done
    printf '\n(e2e: Empath/peer throughput, above 1 is faster; CPU per msg: Empath/peer, below 1 is cheaper)\n'
fi
if [ -n "$DD_RATE" ]; then
    printf '\n| case | system | e2e MB/s | share of the dd rate (%s MB/s) |\n|---|---|---|---|\n' "$DD_RATE"
    for run in "${RUNS[@]}"; do
        read -r label size _ _ _ count <<<"$run"
        [ "$size" -ge 1048576 ] || continue
        for system in $ALL_SYSTEMS; do
            read -r _ e2e _ _ <<<"${RESULT[$label/$system]}"
            printf '| %s | %s | %s | %s |\n' "$label" "$system" "$(fmt "$count" "$e2e" "$size" 1 'a * d / 1e6 / b')" \
                "$(fmt "$count" "$e2e" "$size" 2 "a * d / 1e6 / b / $DD_RATE")"
        done
    done
fi

if [ "$REPEAT" -gt 1 ]; then
    printf '\nEvery figure above is from the median of %s runs by end-to-end time. All runs, end-to-end msg/s in order:\n\n' "$REPEAT"
    printf '| case | system | runs |\n|---|---|---|\n'
    for run in "${RUNS[@]}"; do
        read -r label size _ _ _ count <<<"$run"
        for system in $ALL_SYSTEMS; do
            rates=$(printf '%s' "${TRIES[$label/$system]}" | while read -r _ e2e _; do
                fmt "$count" "$e2e" "" 0 'a / b'
                echo
            done | paste -sd, - | sed 's/,/, /g')
            printf '| %s | %s | %s |\n' "$label" "$system" "$rates"
        done
    done
fi

if [ "${#FAILURES[@]}" -gt 0 ]; then
    printf '\n%s run(s) went wrong; their figures are "-" or not to be trusted:\n' "${#FAILURES[@]}"
    printf -- '- %s\n' "${FAILURES[@]}"
    if [ "$STRICT" = 1 ]; then
        log "bench: failed (STRICT=1): ${#FAILURES[@]} run(s) went wrong, see above"
        exit 1
    fi
fi
