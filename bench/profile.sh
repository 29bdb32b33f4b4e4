#!/usr/bin/env bash
# A CPU profile of one MTA during one bench/run.sh case: a flame graph
# (SVG) of the whole machine, and the share of the samples taken by each
# of the MTA's programs, the load generator, the sinks and the kernel's
# threads. See bench/README.md, "Profiling".
#
# Needs what bench/run.sh needs, plus perf (Debian's linux-perf) and a
# flame graph maker: inferno (`cargo install inferno`), or Brendan
# Gregg's FlameGraph scripts in FLAMEGRAPH_DIR. Empath is built with frame
# pointers (and line tables) into target/profiling, so that perf can walk
# its stacks; Postfix's binaries are Debian's.
#
# Environment (defaults in brackets):
#   SYSTEM [empath]      empath or postfix
#   CASE [5k-reuse]      a case of bench/run.sh (5k-reuse, 5k-noreuse, 100k,
#                        rcpt10)
#   CONCURRENCY [10]     for the 5k cases
#   SAMPLE_SECONDS [8]   how long perf samples, from the first second of the
#                        measured run (the run is made long enough)
#   FREQUENCY [499]      samples per second and CPU
#   OUT [bench/flamegraphs/SYSTEM-CASE.svg]  the flame graph
#   FOLDED []            also keep the folded stacks (one line per stack,
#                        for grep and sums) in this file
#   MINWIDTH [2]         frames narrower than this many pixels (of 1200)
#                        are left out of the graph, which keeps it small
#   FLAMEGRAPH_DIR []    directory with stackcollapse-perf.pl and
#                        flamegraph.pl, used when inferno is not installed
#   SKIP_BUILD [0]       1: profile the frame-pointer build already in
#                        target/profiling, without building it again
#   WORK_PARENT, BASE_PORT   as for bench/run.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYSTEM=${SYSTEM:-empath}
CASE=${CASE:-5k-reuse}
CONCURRENCY=${CONCURRENCY:-10}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-8}
FREQUENCY=${FREQUENCY:-499}
OUT=${OUT:-$ROOT/bench/flamegraphs/$SYSTEM-$CASE.svg}
FLAMEGRAPH_DIR=${FLAMEGRAPH_DIR:-}
FOLDED=${FOLDED:-}
MINWIDTH=${MINWIDTH:-2}
SKIP_BUILD=${SKIP_BUILD:-0}

die() { printf 'profile: %s\n' "$*" >&2; exit 1; }

case $SYSTEM in empath | postfix) ;; *) die "SYSTEM must be empath or postfix" ;; esac
command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
    collapse() { inferno-collapse-perf; }
    flamegraph() { inferno-flamegraph --minwidth "$MINWIDTH" --title "$1"; }
elif [ -n "$FLAMEGRAPH_DIR" ] && [ -f "$FLAMEGRAPH_DIR/flamegraph.pl" ]; then
    collapse() { perl "$FLAMEGRAPH_DIR/stackcollapse-perf.pl"; }
    flamegraph() { perl "$FLAMEGRAPH_DIR/flamegraph.pl" --minwidth "$MINWIDTH" --title "$1"; }
else
    die "no flame graph maker: cargo install inferno, or set FLAMEGRAPH_DIR"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/empath-profile.XXXXXX")
RUN=""
finish() {
    [ -z "$RUN" ] || kill "$RUN" 2>/dev/null || true
    rm -rf "$TMP"
}
trap finish EXIT

if [ "$SYSTEM" = empath ]; then
    if [ "$SKIP_BUILD" != 1 ]; then
        printf 'profile: building Empath with frame pointers (target/profiling)\n' >&2
        (cd "$ROOT" && RUSTFLAGS="-C force-frame-pointers=yes" \
            CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
            cargo build --release --workspace --bins --target-dir target/profiling >&2)
    fi
    export EMPATH_BIN_DIR=$ROOT/target/profiling/release
fi

# Enough messages for the run to outlast the sampling, at a bit more than
# the rates bench/README.md reports (5 KB messages a second; the other
# cases run at a third of that or more).
case $SYSTEM in empath) RATE=2500 ;; postfix) RATE=900 ;; esac
N=$(((SAMPLE_SECONDS + 6) * RATE))
SYSTEMS=$SYSTEM CASES=$CASE CONCURRENCY=$CONCURRENCY DIRECT=0 SKIP_BUILD=1 \
    N=$N N_100K=$((N / 3)) N_RCPT=$((N / 3)) "$ROOT/bench/run.sh" >"$TMP/run.log" 2>&1 &
RUN=$!
# The measured run starts when run.sh names it ("bench: 5k-reuse-c10:
# empath, N messages"), after the warm-up.
for _ in $(seq 600); do
    grep -q "^bench: ${CASE}[^ ]*: $SYSTEM, " "$TMP/run.log" && break
    kill -0 "$RUN" 2>/dev/null || { cat "$TMP/run.log" >&2; die "bench/run.sh ended first"; }
    sleep 0.5
done
grep -q "^bench: ${CASE}[^ ]*: $SYSTEM, " "$TMP/run.log" || die "the measured run did not start"
sleep 1
perf record -F "$FREQUENCY" -a -g -o "$TMP/perf.data" -- sleep "$SAMPLE_SECONDS" 2>/dev/null
if ! kill -0 "$RUN" 2>/dev/null || grep -q '^| ' "$TMP/run.log"; then
    printf 'profile: the run ended while perf sampled: the profile includes idle time\n' >&2
fi
wait "$RUN" || { cat "$TMP/run.log" >&2; die "bench/run.sh failed"; }
RUN=""
grep '^|' "$TMP/run.log" | tail -1 >&2

perf script -i "$TMP/perf.data" 2>/dev/null >"$TMP/perf.script"
collapse <"$TMP/perf.script" >"$TMP/folded"
[ -z "$FOLDED" ] || cp "$TMP/folded" "$FOLDED"
mkdir -p "$(dirname "$OUT")"
flamegraph "$SYSTEM, $CASE, c=$CONCURRENCY: all CPUs, $SAMPLE_SECONDS s" <"$TMP/folded" >"$OUT"
printf 'profile: flame graph in %s\n' "$OUT" >&2

# Share of the samples by program. Empath's daemons name their threads
# after the runtime (tokio-rt-worker), so a sample is put to the program
# whose binary is on its stack; the rest go by thread name, numbers and
# kernel worker details dropped (kworker/u8:2-ext4 -> kworker).
python3 - "$TMP/perf.script" <<'PY'
import collections, re, sys

samples, current = [], None
for line in open(sys.argv[1], errors="replace"):
    if not line.strip():
        if current:
            samples.append(current)
        current = None
    elif not line[0].isspace():
        fields = line.split()
        current = [fields[0], fields[1].split("/")[0], set()]
    elif current is not None:
        dso = re.search(r"\(([^)]*)\)\s*$", line)
        if dso:
            current[2].add(dso.group(1).rsplit("/", 1)[-1])
if current:
    samples.append(current)

program_of_pid = {}
for comm, pid, dsos in samples:
    for dso in dsos:
        if dso.startswith("empath"):
            program_of_pid[pid] = dso
counts = collections.Counter()
for comm, pid, dsos in samples:
    name = program_of_pid.get(pid) or re.sub(r"[/:].*", "", comm)
    counts[name] += 1
total = sum(counts.values()) or 1
print("share of the samples (%d):" % total)
for name, count in counts.most_common(20):
    print("  %5.1f%%  %s" % (100 * count / total, name))
PY
