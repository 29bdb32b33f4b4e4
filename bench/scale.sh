#!/usr/bin/env bash
# Scale benchmark (issue 14): Empath with a million deferred messages in
# its queue. See bench/README.md, "Scale". Needs root (it mounts a
# filesystem image), Debian's postfix package (smtp-source, smtp-sink),
# e2fsprogs, curl and a Rust toolchain.
#
# 1. Small queue: into an empty spool, with the sink down, smtp-source
#    sends ACCEPT_N messages (accept rate into an empty queue); they are
#    deferred; the sink comes up and `empathctl queue process-now` lets
#    them go (drain rate of a small queue).
# 2. The bulk path (empath-queue-fill) writes QUEUED deferred messages,
#    due in a day, into a fresh spool, through common::queue as cleanup
#    and qmgr write them.
# 3. Full queue: the master starts on it (start time, qmgr's recovery
#    time); with the sink down smtp-source sends ACCEPT_N more (accept rate
#    into the full queue); `mailq | tail -1`, `empathctl queue stats` and
#    /health/ready are timed; the sink comes up and process-now lets
#    DRAIN_N of them go (drain rate of the full queue). Peak RSS (VmHWM)
#    of qmgr, smtpd and showq all along.
#
# Environment (defaults in brackets):
#   QUEUED [1000000]     deferred messages in the full queue
#   ACCEPT_N [20000]     messages sent by smtp-source in each accept run
#   DRAIN_N [100000]     deliveries timed when the full queue drains
#   SIZE [512]           payload bytes (smtp-source -l, queue-fill --size)
#   SESSIONS [10]        smtp-source sessions in parallel
#   FILL_THREADS [16]    writer threads of empath-queue-fill
#   BASE_PORT [25260]    ports BASE (smtpd), BASE+1 (sink), BASE+2 (health)
#   FS [image]           image: the spool on a loop-mounted ext4 image with
#                        1 KiB blocks in WORK_PARENT (2.5 GB written for a
#                        million messages instead of 8 GB with 4 KiB blocks);
#                        dir: the spool in WORK_PARENT itself
#   IMAGE_GB [12]        size of the (sparse) image
#   WORK_PARENT [/var/tmp]  a disk filesystem (not tmpfs: fsync must cost)
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP [0]             1: keep the work dir (logs; the image is removed)
#   TIMEOUT [3600]       seconds allowed for each wait
set -euo pipefail

QUEUED=${QUEUED:-1000000}
ACCEPT_N=${ACCEPT_N:-20000}
DRAIN_N=${DRAIN_N:-100000}
SIZE=${SIZE:-512}
SESSIONS=${SESSIONS:-10}
FILL_THREADS=${FILL_THREADS:-16}
BASE_PORT=${BASE_PORT:-25260}
FS=${FS:-image}
IMAGE_GB=${IMAGE_GB:-12}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
TIMEOUT=${TIMEOUT:-3600}

SMTP_PORT=$BASE_PORT
SINK_PORT=$((BASE_PORT + 1))
HEALTH_PORT=$((BASE_PORT + 2))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
WORK=$(mktemp -d "$WORK_PARENT/empath-scale.XXXXXX")
chmod 755 "$WORK"
MNT=$WORK/fs
MASTER=""
SINK=""
SAMPLER=""

log() { printf '%s\n' "$*" >&2; }
die() { log "scale: $*"; exit 1; }

cleanup() {
    local status=$?
    set +e
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    [ -n "$SINK" ] && kill "$SINK" 2>/dev/null
    stop_empath
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount "$MNT" || umount -l "$MNT"
    fi
    rm -f "$WORK/fs.img"
    if [ "$KEEP" = 1 ] || [ $status -ne 0 ]; then
        rm -rf "$MNT"
        log "scale: work dir (logs) kept at $WORK"
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
need mkfs.ext4 "apt-get install e2fsprogs"
need curl "apt-get install curl"
[ "$(id -u)" = 0 ] || die "run as root (it mounts the spool's filesystem)"
for port in $SMTP_PORT $SINK_PORT $HEALTH_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; set BASE_PORT"
    fi
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }'; }
mib() { awk -v k="$1" 'BEGIN { if (k > 0) printf "%.0f", k / 1024; else print "-" }'; }

wait_port() { # port seconds
    for _ in $(seq $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after $2 s"
}

if [ "$SKIP_BUILD" != 1 ]; then
    log "scale: cargo build --release"
    (cd "$ROOT" && cargo build --release --workspace --bins >&2)
fi
for binary in empath empathctl mailq empath-queue-fill; do
    [ -x "$BIN/$binary" ] || die "$BIN/$binary is missing (cargo build --release)"
done

mkdir -p "$MNT"
if [ "$FS" = image ]; then
    truncate -s "${IMAGE_GB}G" "$WORK/fs.img"
    # 1 KiB blocks: a small queue file takes 1 KiB, not 4. Enough inodes
    # for two files per message.
    inodes=$(( (QUEUED + 3 * ACCEPT_N) * 2 + 100000 ))
    mkfs.ext4 -q -F -b 1024 -I 128 -N "$inodes" "$WORK/fs.img" >&2
    mount -o loop "$WORK/fs.img" "$MNT"
fi
log "scale: QUEUED=$QUEUED ACCEPT_N=$ACCEPT_N DRAIN_N=$DRAIN_N SIZE=$SIZE SESSIONS=$SESSIONS"
log "scale: spool on $(stat -f -c %T "$MNT") ($FS) under $WORK; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"

CONFIG=$WORK/empath.config.ron
write_config() { # spool
    cat >"$CONFIG" <<RON
Empath(
    hostname: "bench.empath.test",
    smtp_controller: (listeners: [{ socket: "127.0.0.1:$SMTP_PORT" }]),
    spool: (path: "$1"),
    delivery: (
        max_concurrent_deliveries: 20,
        max_concurrency_per_domain: 20,
        rate_limit: (messages_per_second: 1000000.0, burst_size: 1000000),
        // While the sink is down every attempt fails at once; the breaker
        // would only add its own waiting to the drain.
        circuit_breaker: (enabled: false),
        domains: { "sink.test": (mx_override: "127.0.0.1:$SINK_PORT") },
    ),
    health: (enabled: true, listen_address: "127.0.0.1:$HEALTH_PORT", max_queue_size: 100000000),
    control_socket: None,
    allow_root: true,
)
RON
}

LOG=""
START_S=""
RECOVERED_S=""
start_empath() { # spool name -> sets MASTER, START_S, RECOVERED_S
    local spool=$1
    LOG=$WORK/empath-$2.log
    write_config "$spool"
    local started
    started=$(now)
    "$BIN/empath" --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
    MASTER=$!
    wait_port "$SMTP_PORT" "$TIMEOUT"
    local up
    up=$(now)
    for _ in $(seq $((TIMEOUT * 10))); do
        grep -q "queue recovered" "$LOG" && break
        sleep 0.1
    done
    local recovered
    recovered=$(now)
    # Every daemon is up once showq answers.
    for _ in $(seq 300); do
        [ -S "$spool/public/showq.sock" ] && [ -S "$spool/private/cleanup.sock" ] && break
        sleep 0.1
    done
    start_sampler "$2"
    START_S=$(elapsed "$started" "$up")
    RECOVERED_S=$(elapsed "$started" "$recovered")
}

STOP_S=""
stop_empath() { # sets STOP_S, the seconds the master took to stop
    [ -n "$MASTER" ] || return 0
    if [ -n "$SAMPLER" ]; then
        kill "$SAMPLER" 2>/dev/null || true
        wait "$SAMPLER" 2>/dev/null || true
    fi
    SAMPLER=""
    local started
    started=$(now)
    kill "$MASTER" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$MASTER" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$MASTER" 2>/dev/null || true
    wait "$MASTER" 2>/dev/null || true
    MASTER=""
    STOP_S=$(elapsed "$started" "$(now)")
}

daemon_pid() { pgrep -P "$MASTER" -x "$1" | head -1; }

# VmHWM is the peak RSS of the process's life; a daemon restarted by the
# master would start again from zero, so the sampler also keeps the
# largest VmRSS it saw of each daemon name.
start_sampler() { # name
    local out=$WORK/rss-$1
    : >"$out"
    (
        while sleep 0.5; do
            for name in empath-qmgr empath-smtpd empath-showq empath-cleanup; do
                pid=$(pgrep -P "$MASTER" -x "$name" | head -1) || continue
                awk -v n="$name" '/^VmHWM/ { print n, $2 }' "/proc/$pid/status" 2>/dev/null
            done >>"$out"
        done
    ) &
    SAMPLER=$!
}

peak_kib() { # log-name daemon
    awk -v n="$2" '$1 == n && $2 > max { max = $2 } END { print max + 0 }' "$WORK/rss-$1"
}

queued_files() { # spool state
    find "$1/$2" -type f 2>/dev/null | wc -l
}

wait_settled() { # spool: nothing new or being delivered
    for _ in $(seq $((TIMEOUT * 2))); do
        if [ "$(queued_files "$1" incoming)" = 0 ] && [ "$(queued_files "$1" active)" = 0 ]; then
            return 0
        fi
        sleep 0.5
    done
    die "the queue in $1 did not settle within $TIMEOUT s"
}

accept_run() { # n -> seconds
    local started
    started=$(now)
    timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$1" -l "$SIZE" -d \
        -f bench@client.test -t user@sink.test "127.0.0.1:$SMTP_PORT" \
        >"$WORK/source.out" 2>&1 || die "smtp-source failed: $(tail -3 "$WORK/source.out")"
    elapsed "$started" "$(now)"
}

drain_run() { # spool n -> seconds until the sink has n messages
    smtp-sink -u nobody -M "$2" -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$WORK/sink.out" 2>&1 </dev/null &
    SINK=$!
    wait_port "$SINK_PORT" 10
    local started
    started=$(now)
    "$BIN/empathctl" --control-socket "$1/public/control.sock" queue process-now >&2
    local deadline=$(($(date +%s) + TIMEOUT))
    while kill -0 "$SINK" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || die "the sink did not get $2 messages within $TIMEOUT s"
        sleep 0.05
    done
    SINK=""
    elapsed "$started" "$(now)"
}

timed() { # command... -> "seconds" on stdout, the command's output in $WORK/timed.out
    local started
    started=$(now)
    "$@" >"$WORK/timed.out" 2>&1 || log "scale: $* failed: $(tail -2 "$WORK/timed.out")"
    elapsed "$started" "$(now)"
}

# ------------------------------------------------------------ small queue
SMALL=$MNT/small
log "scale: [small] starting on an empty spool"
start_empath "$SMALL" small
small_start=$START_S small_recovered=$RECOVERED_S
log "scale: [small] sending $ACCEPT_N with the sink down"
small_accept=$(accept_run "$ACCEPT_N")
wait_settled "$SMALL"
log "scale: [small] draining $ACCEPT_N"
small_drain=$(drain_run "$SMALL" "$ACCEPT_N")
small_qmgr=$(peak_kib small empath-qmgr)
small_smtpd=$(peak_kib small empath-smtpd)
stop_empath
rm -rf "$SMALL"

# ------------------------------------------------------------ fill
FULL=$MNT/full
log "scale: [fill] writing $QUEUED deferred messages with empath-queue-fill"
fill_started=$(now)
"$BIN/empath-queue-fill" --spool "$FULL" --count "$QUEUED" --state deferred \
    --size "$SIZE" --threads "$FILL_THREADS" --to user@sink.test >&2
fill_s=$(elapsed "$fill_started" "$(now)")
sync
log "scale: [fill] $(df -h "$MNT" | tail -1)"

# ------------------------------------------------------------ full queue
log "scale: [full] starting on $QUEUED deferred messages"
start_empath "$FULL" full
full_start=$START_S full_recovered=$RECOVERED_S
qmgr_pid=$(daemon_pid empath-qmgr)
qmgr_rss_idle=$(awk '/^VmRSS/ { print $2 }' "/proc/$qmgr_pid/status")
log "scale: [full] sending $ACCEPT_N with the sink down"
full_accept=$(accept_run "$ACCEPT_N")
wait_settled "$FULL"
log "scale: [full] listing"
mailq_s=$(timed sh -c "'$BIN/mailq' -C '$CONFIG' | tail -1")
mailq_last=$(cat "$WORK/timed.out")
stats_s=$(timed "$BIN/empathctl" --control-socket "$FULL/public/control.sock" queue stats)
stats_total=$(awk '/^Total/ { print $2 }' "$WORK/timed.out")
ready_s=$(timed curl -s "http://127.0.0.1:$HEALTH_PORT/health/ready")
log "scale: [full] draining $DRAIN_N"
full_drain=$(drain_run "$FULL" "$DRAIN_N")
full_qmgr=$(peak_kib full empath-qmgr)
full_smtpd=$(peak_kib full empath-smtpd)
full_showq=$(peak_kib full empath-showq)
stop_empath
full_stop=$STOP_S

# ------------------------------------------------------------ report
a0=$(rate "$ACCEPT_N" "$small_accept")
a1=$(rate "$ACCEPT_N" "$full_accept")
d0=$(rate "$ACCEPT_N" "$small_drain")
d1=$(rate "$DRAIN_N" "$full_drain")
cat <<REPORT

Scale benchmark: $QUEUED deferred messages, $SIZE-byte payload, spool on $FS
                                      empty/small queue     full queue
accept rate (msg/s, sink down)        $(printf '%-21s' "$a0") $a1  ($(ratio "$a1" "$a0") of empty; goal >= 80%)
drain rate (msg/s, sink back)         $(printf '%-21s' "$d0") $d1  ($(ratio "$d1" "$d0") of small; goal >= 90%)
master start to SMTP listening (s)    $(printf '%-21s' "$small_start") $full_start
master start to qmgr recovered (s)    $(printf '%-21s' "$small_recovered") $full_recovered
qmgr peak RSS (MiB)                   $(printf '%-21s' "$(mib "$small_qmgr")") $(mib "$full_qmgr")  (goal < 200; $(mib "$qmgr_rss_idle") after recovery)
smtpd peak RSS (MiB)                  $(printf '%-21s' "$(mib "$small_smtpd")") $(mib "$full_smtpd")
showq peak RSS (MiB)                  $(printf '%-21s' "-") $(mib "$full_showq")
fill, empath-queue-fill (s)           $fill_s ($(rate "$QUEUED" "$fill_s") msg/s)
mailq | tail -1 (s)                   $mailq_s: $mailq_last
empathctl queue stats (s)             $stats_s: total $stats_total
GET /health/ready (s)                 $ready_s
master stop (s)                       $full_stop
REPORT
