#!/usr/bin/env bash
# Empath vs Postfix: smtp-source -> MTA -> smtp-sink, on loopback, with
# each MTA's full durability (both fsync the queue file before the 250).
# See bench/README.md. Needs root (Postfix), Debian's postfix package
# (smtp-source, smtp-sink) and a Rust toolchain.
#
# Environment (defaults in brackets):
#   N [10000]            messages per run
#   SIZE [5120]          payload bytes per message (smtp-source -l)
#   CONCURRENCY ["10 50"] client sessions in parallel, one run each
#   REUSE [1]            1: smtp-source -d (many messages per session)
#   WARMUP [200]         messages sent once to each MTA before measuring
#   TIMEOUT [900]        seconds allowed per run before it counts as failed
#   BASE_PORT [25250]    ports BASE..BASE+3 on 127.0.0.1
#   SYSTEMS ["empath postfix"]
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP [0]             1: keep the work dir (configs, logs, spools)
#   WORK_PARENT [/var/tmp]  where the work dir (both spools) is made; it
#                        must be a real disk filesystem, or fsync means nothing
#   EMPATH_WRAPPER []    command put in front of `empath`, for profiling,
#                        e.g. "strace -f -c -o /tmp/empath.strace"
set -euo pipefail

N=${N:-10000}
SIZE=${SIZE:-5120}
CONCURRENCY=${CONCURRENCY:-"10 50"}
REUSE=${REUSE:-1}
WARMUP=${WARMUP:-200}
TIMEOUT=${TIMEOUT:-900}
BASE_PORT=${BASE_PORT:-25250}
SYSTEMS=${SYSTEMS:-"empath postfix"}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
WORK_PARENT=${WORK_PARENT:-/var/tmp}
read -r -a EMPATH_WRAPPER <<<"${EMPATH_WRAPPER:-}"

EMPATH_PORT=$BASE_PORT
EMPATH_SINK_PORT=$((BASE_PORT + 1))
POSTFIX_PORT=$((BASE_PORT + 2))
POSTFIX_SINK_PORT=$((BASE_PORT + 3))
# Both MTAs may run this many deliveries to the one destination at once
# (Postfix's default_destination_concurrency_limit is 20).
DEST_CONCURRENCY=20

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "$WORK_PARENT/empath-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
POSTFIX_CONF=""

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

cleanup() {
    local status=$?
    set +e
    if [ -n "$POSTFIX_CONF" ]; then
        postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
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
[ "$(id -u)" = 0 ] || die "run as root (Postfix needs it)"
for port in $EMPATH_PORT $EMPATH_SINK_PORT $POSTFIX_PORT $POSTFIX_SINK_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; set BASE_PORT"
    fi
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }

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
    local dir=$WORK/empath
    mkdir -p "$dir"
    cat >"$dir/empath.config.ron" <<RON
Empath(
    hostname: "bench.empath.test",
    smtp_controller: (listeners: [{ socket: "127.0.0.1:$EMPATH_PORT" }]),
    spool: (path: "$dir/spool"),
    delivery: (
        max_concurrent_deliveries: $DEST_CONCURRENCY,
        max_concurrency_per_domain: $DEST_CONCURRENCY,
        rate_limit: (messages_per_second: 1000000.0, burst_size: 1000000),
        domains: { "sink.test": (mx_override: "127.0.0.1:$EMPATH_SINK_PORT") },
    ),
    health: (enabled: false),
    control_socket: None,
    // Like the system tests: a throwaway spool, no dedicated user needed.
    allow_root: true,
)
RON
    "${EMPATH_WRAPPER[@]}" "$ROOT/target/release/empath" --config "$dir/empath.config.ron" \
        >"$dir/empath.log" 2>&1 </dev/null &
    PIDS+=($!)
    wait_port "$EMPATH_PORT" 30
    # With a wrapper, $! is the wrapper's pid: find the master itself (by
    # this run's unique config path) so that cleanup stops it too.
    local master
    master=$(pgrep -f -x -- "$ROOT/target/release/empath --config $dir/empath.config.ron" | head -1 || true)
    [ -n "$master" ] && PIDS=("$master" "${PIDS[@]}")
}

# ---------------------------------------------------------------- Postfix
start_postfix() {
    local dir=$WORK/postfix
    POSTFIX_CONF=$dir/etc
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    chown postfix "$dir/data"
    cp /etc/postfix/master.cf "$dir/etc/master.cf"
    # A private instance: its own queue, loopback only, everything relayed
    # to its sink, default durability (fsync before 250).
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
relayhost = [127.0.0.1]:$POSTFIX_SINK_PORT
default_destination_concurrency_limit = $DEST_CONCURRENCY
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
CF
    # smtpd on our port instead of 25; no chroot (the queue is elsewhere).
    postconf -c "$dir/etc" -M# smtp/inet
    postconf -c "$dir/etc" -M "127.0.0.1:$POSTFIX_PORT/inet=127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd"
    postconf -c "$dir/etc" -F '*/*/chroot = n'
    if ! postfix -c "$dir/etc" start >&2; then
        # Postfix prints its errors only to a tty or to the log.
        command -v script >/dev/null && script -qc "postfix -c $dir/etc check" /dev/null >&2
        die "postfix did not start; see $dir/maillog"
    fi
    wait_port "$POSTFIX_PORT" 30
}

# ---------------------------------------------------------------- a run
# run SYSTEM PORT SINK_PORT COUNT CONCURRENCY -> "accepted_s e2e_s"
run_once() {
    local system=$1 port=$2 sink_port=$3 count=$4 sessions=$5
    local dir=$WORK/runs/$system-c$sessions-n$count-$RANDOM
    mkdir -p "$dir"
    smtp-sink -u nobody -M "$count" -m 512 "127.0.0.1:$sink_port" 1024 \
        >"$dir/sink.out" 2>&1 </dev/null &
    local sink=$!
    PIDS+=($sink)
    wait_port "$sink_port" 10
    local flags=(-s "$sessions" -m "$count" -l "$SIZE" -f bench@client.test -t user@sink.test)
    [ "$REUSE" = 1 ] && flags+=(-d)
    local start end_accept end_deliver
    start=$(now)
    timeout "$TIMEOUT" smtp-source "${flags[@]}" "127.0.0.1:$port" >"$dir/source.out" 2>&1 \
        || { log "bench: smtp-source failed ($system, c=$sessions): $(tail -3 "$dir/source.out")"; kill "$sink"; echo "- -"; return; }
    end_accept=$(now)
    local deadline=$(( $(date +%s) + TIMEOUT ))
    while kill -0 "$sink" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "bench: $system: the sink did not get all $count messages within $TIMEOUT s"
            kill "$sink"
            echo "$(elapsed "$start" "$end_accept") -"
            return
        fi
        sleep 0.02
    done
    end_deliver=$(now)
    echo "$(elapsed "$start" "$end_accept") $(elapsed "$start" "$end_deliver")"
}

port_of() { [ "$1" = empath ] && echo "$EMPATH_PORT $EMPATH_SINK_PORT" || echo "$POSTFIX_PORT $POSTFIX_SINK_PORT"; }

log "bench: N=$N SIZE=$SIZE CONCURRENCY=\"$CONCURRENCY\" REUSE=$REUSE systems: $SYSTEMS"
log "bench: work dir $WORK on $(stat -f -c %T "$WORK"); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for system in $SYSTEMS; do
    "start_$system"
    read -r port sink_port <<<"$(port_of "$system")"
    if [ "$WARMUP" -gt 0 ]; then
        log "bench: warming up $system with $WARMUP messages"
        run_once "$system" "$port" "$sink_port" "$WARMUP" 10 >/dev/null
    fi
done

declare -A RESULT
for sessions in $CONCURRENCY; do
    # Interleaved, so that both see the same (shared) machine.
    for system in $SYSTEMS; do
        read -r port sink_port <<<"$(port_of "$system")"
        log "bench: $system, concurrency $sessions, $N messages"
        RESULT[$system-$sessions]=$(run_once "$system" "$port" "$sink_port" "$N" "$sessions")
        log "bench:   accepted in / delivered in (s): ${RESULT[$system-$sessions]}"
    done
done

printf '\n%-8s %5s %7s %6s | %10s %10s | %10s %10s\n' system conc N size "accept s" "e2e s" "accept/s" "e2e/s"
for sessions in $CONCURRENCY; do
    for system in $SYSTEMS; do
        read -r acc e2e <<<"${RESULT[$system-$sessions]}"
        printf '%-8s %5s %7s %6s | %10s %10s | %10s %10s\n' "$system" "$sessions" "$N" "$SIZE" \
            "$acc" "$e2e" "$(rate "$N" "$acc")" "$(rate "$N" "$e2e")"
    done
done
if [[ " $SYSTEMS " == *" empath "* && " $SYSTEMS " == *" postfix "* ]]; then
    printf '\n%5s %22s %22s\n' conc "Empath/Postfix accept" "Empath/Postfix e2e"
    for sessions in $CONCURRENCY; do
        read -r ea ee <<<"${RESULT[empath-$sessions]}"
        read -r pa pe <<<"${RESULT[postfix-$sessions]}"
        ratio() { awk -v e="$1" -v p="$2" 'BEGIN { if (e > 0 && p > 0) printf "%.2fx", p / e; else print "-" }'; }
        printf '%5s %22s %22s\n' "$sessions" "$(ratio "$ea" "$pa")" "$(ratio "$ee" "$pe")"
    done
fi
