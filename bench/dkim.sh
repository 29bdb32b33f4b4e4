#!/usr/bin/env bash
# End-to-end rate of Empath with DKIM signing (RSA-2048) against the same
# Empath without it, in the same run on the same machine: Postfix's
# smtp-source -> Empath -> smtp-sink on loopback, full durability. The two
# instances take turns, ROUNDS times, and the table shows each run and the
# median. See bench/README.md. Needs smtp-source and smtp-sink (Debian's
# postfix package; Postfix itself need not run) and a Rust toolchain.
#
# Environment (defaults in brackets):
#   N [5000]             messages per run
#   SIZE [5120]          payload bytes per message (smtp-source -l)
#   CONCURRENCY [10]     client sessions in parallel
#   ROUNDS [3]           runs of each instance, interleaved
#   BITS [2048]          RSA key size
#   WARMUP [200]         messages sent once to each instance first
#   TIMEOUT [600]        seconds allowed per run
#   BASE_PORT [25270]    ports BASE..BASE+3 on 127.0.0.1
#   SKIP_BUILD [0]       1: use the existing target/release binaries
#   KEEP [0]             1: keep the work dir
#   WORK_PARENT [/var/tmp]  where the spools go (a real disk filesystem)
set -euo pipefail

N=${N:-5000}
SIZE=${SIZE:-5120}
CONCURRENCY=${CONCURRENCY:-10}
ROUNDS=${ROUNDS:-3}
BITS=${BITS:-2048}
WARMUP=${WARMUP:-200}
TIMEOUT=${TIMEOUT:-600}
BASE_PORT=${BASE_PORT:-25270}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
WORK_PARENT=${WORK_PARENT:-/var/tmp}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "$WORK_PARENT/empath-dkim-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

cleanup() {
    local status=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
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

command -v smtp-source >/dev/null || die "smtp-source not found (apt-get install postfix)"
command -v smtp-sink >/dev/null || die "smtp-sink not found (apt-get install postfix)"
for port in $(seq "$BASE_PORT" $((BASE_PORT + 3))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use; set BASE_PORT"
    fi
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }
wait_port() {
    for _ in $(seq $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after $2 s"
}

if [ "$SKIP_BUILD" != 1 ]; then
    log "bench: cargo build --release"
    (cd "$ROOT" && cargo build --release --workspace --bins >&2)
fi

# The key, made the way an operator would.
"$ROOT/target/release/empathctl" dkim keygen client.test bench --bits "$BITS" \
    --output-dir "$WORK" >"$WORK/keygen.txt"

# start NAME PORT SINK_PORT EXTRA_RON
start() {
    local dir=$WORK/$1
    mkdir -p "$dir"
    cat >"$dir/empath.config.ron" <<RON
Empath(
    hostname: "bench.empath.test",
    smtp_controller: (listeners: [{ socket: "127.0.0.1:$2" }]),
    spool: (path: "$dir/spool"),
    delivery: (
        max_concurrent_deliveries: 20,
        max_concurrency_per_domain: 20,
        rate_limit: (messages_per_second: 1000000.0, burst_size: 1000000),
        domains: { "sink.test": (mx_override: "127.0.0.1:$3") },
    ),
    health: (enabled: false),
    control_socket: None,
    allow_root: true,
    $4
)
RON
    "$ROOT/target/release/empath" --config "$dir/empath.config.ron" >"$dir/empath.log" 2>&1 </dev/null &
    PIDS+=($!)
    wait_port "$2" 30
}

# run NAME PORT SINK_PORT COUNT [DUMP] -> end-to-end seconds, or "-"
run() {
    local dir=$WORK/runs/$1-$RANDOM
    mkdir -p "$dir"
    local dump=()
    # smtp-sink writes the dump as nobody.
    [ -n "${5:-}" ] && { dump=(-d "$dir/message."); chmod 777 "$dir"; }
    smtp-sink -u nobody "${dump[@]}" -M "$4" -m 512 "127.0.0.1:$3" 1024 >"$dir/sink.out" 2>&1 </dev/null &
    local sink=$!
    PIDS+=("$sink")
    wait_port "$3" 10
    local start
    start=$(now)
    timeout "$TIMEOUT" smtp-source -d -s "$CONCURRENCY" -m "$4" -l "$SIZE" \
        -f bench@client.test -t user@sink.test "127.0.0.1:$2" >"$dir/source.out" 2>&1 \
        || { log "bench: smtp-source failed ($1): $(tail -3 "$dir/source.out")"; kill "$sink"; echo -; return; }
    local deadline=$(( $(date +%s) + TIMEOUT ))
    while kill -0 "$sink" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "bench: $1: the sink did not get all $4 messages"
            kill "$sink"
            echo -
            return
        fi
        sleep 0.02
    done
    elapsed "$start" "$(now)"
    if [ -n "${5:-}" ]; then
        local dumped=("$dir"/message.*)
        cp "${dumped[0]}" "$WORK/$1.sample"
    fi
    true
}

KEY=$WORK/client.test.bench.pem
start plain "$BASE_PORT" $((BASE_PORT + 1)) ""
start dkim $((BASE_PORT + 2)) $((BASE_PORT + 3)) \
    "dkim: (keys: [(domain: \"client.test\", selector: \"bench\", private_key: \"$KEY\")]),"

# Each instance relays a few messages first; one is kept, to show what
# the next hop gets.
run plain "$BASE_PORT" $((BASE_PORT + 1)) 5 dump >/dev/null
run dkim $((BASE_PORT + 2)) $((BASE_PORT + 3)) 5 dump >/dev/null
grep -q '^DKIM-Signature: .*a=rsa-sha256' "$WORK/dkim.sample" \
    || die "the signing instance did not sign: $(head -20 "$WORK/dkim.sample")"
grep -q '^DKIM-Signature' "$WORK/plain.sample" && die "the plain instance signed"
if [ "$WARMUP" -gt 0 ]; then
    run plain "$BASE_PORT" $((BASE_PORT + 1)) "$WARMUP" >/dev/null
    run dkim $((BASE_PORT + 2)) $((BASE_PORT + 3)) "$WARMUP" >/dev/null
fi

log "bench: N=$N SIZE=$SIZE CONCURRENCY=$CONCURRENCY ROUNDS=$ROUNDS RSA-$BITS; $(nproc) CPUs; $(stat -f -c %T "$WORK")"
declare -a PLAIN DKIM
for round in $(seq "$ROUNDS"); do
    PLAIN+=("$(run plain "$BASE_PORT" $((BASE_PORT + 1)) "$N")")
    log "bench: round $round without signing: ${PLAIN[-1]} s"
    DKIM+=("$(run dkim $((BASE_PORT + 2)) $((BASE_PORT + 3)) "$N")")
    log "bench: round $round with signing:    ${DKIM[-1]} s"
done

median() { printf '%s\n' "$@" | grep -v '^-$' | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "-" }'; }
printf '\n%-22s %s\n' "run (e2e msg/s)" "$(seq -s ' ' -f '%8g' 1 "$ROUNDS")   median"
line() {
    local name=$1; shift
    local rates=()
    for s in "$@"; do rates+=("$(rate "$N" "$s")"); done
    printf '%-22s' "$name"
    printf ' %8s' "${rates[@]}"
    printf ' %8s\n' "$(rate "$N" "$(median "$@")")"
}
line "without DKIM" "${PLAIN[@]}"
line "DKIM RSA-$BITS" "${DKIM[@]}"
awk -v a="$(rate "$N" "$(median "${PLAIN[@]}")")" -v b="$(rate "$N" "$(median "${DKIM[@]}")")" \
    'BEGIN { if (a > 0) printf "\nsigning keeps %.0f%% of the rate\n", 100 * b / a }'
