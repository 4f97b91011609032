#!/usr/bin/env bash
# Benchmark (issue 9): stm32boot side by side with stm32flash 0.7 (and stm32loader 0.7.1 where it
# can run) against the simulator, each run on a fresh simulated chip, in one invocation.
#
#   scripts/bench.sh [--quick] [--runs N] [w1 w2 w3 w4 w5 scale]     (default: all of them)
#
# Workloads (typical timing: characters at the line rate, datasheet erase/programming times):
#   w1     write + verify of a 256 KiB random image at 115200 baud: stm32f411 and stm32l476 as
#          shipped (protocol V3.1, no Get Checksum, so every tool verifies by reading back), and
#          stm32l476+A1: the same part with its protocol version raised to 3.3 (sim
#          `version=0x33`), so Get lists Get Checksum (0xA1) -- a what-if, labelled as such.
#   w2     the same size with 75 % of the image erased value (0xFF): stm32l476, stm32l476+A1.
#   w3     a 64-byte coefficient update inside a 2 KB page that holds firmware (stm32l476 and
#          stm32l476+A1): `stm32boot write coeff.bin -a ADDR --verify` against stm32flash's way
#          (-r the page, patch it, -w it back with -v).
#   w4     64 KiB write + verify at a 150 ms round trip (sim `latency=150ms`), stm32f411.
#   w5     host CPU time (user + sys of the tool's own processes, not the simulator's) per MiB
#          moved, timing off (`timing=fast`), 1 MiB image on stm32l476.
#   scale  w1 on stm32l476 (the part with 1 MiB of flash) at 32 KiB and 1 MiB (256 KiB comes from
#          w1), and at 57600 and 230400 baud (256 KiB).
#
# Links: stm32boot and stm32flash reach the simulator through a pseudo-terminal, which carries no
# parity, so both run 8N1 there (`--parity none`, `-m 8n1`): 10 bits per byte. stm32loader cannot
# open a pty (it drives RTS/DTR) or a URL, so it runs through tests/clients/stm32loader_url.py on
# the simulator's RFC 2217 endpoint at 8E1: 11 bits per byte. Each tool's lower bound uses its own
# bits per byte; bytes, round trips and flash time come from the simulator's exit report, CPU time
# from wait4 around the tool. The lower bound is explained in scripts/bench_report.py.
#
# Runs: the median of N runs (default 3) for the short workloads; one run for the long ones (W4,
# the 1 MiB and 57600-baud points, stm32loader's typical-timing runs, stm32flash on the +A1
# what-if, which differs from stm32l476 only in a Get Checksum stm32flash never uses); --runs N
# sets both. --quick: one run each, small sizes (32 KiB, W4 at 16 KiB, W5 at 64 KiB), written to
# bench/quick/ -- a smoke test, not the issue's numbers. The full default run takes about 45
# minutes, most of it on the wire.
#
# Output: a table per workload, a summary of the issue's targets (met / NOT met),
# bench/results.csv (every run) and bench/time-vs-size.png (matplotlib), and the whole printout
# in bench/results.txt.
#
# Needs stm32flash (Debian package), python3; stm32loader 0.7.1 + pyserial (pip) for its rows,
# matplotlib (pip) for the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
  echo "usage: scripts/bench.sh [--quick] [--runs N] [w1 w2 w3 w4 w5 scale]" >&2
  exit 2
}

QUICK=0
RUNS=
SEL=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --runs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage; RUNS=$2; shift ;;
    --runs=*) RUNS=${1#--runs=}; [[ $RUNS =~ ^[1-9][0-9]*$ ]] || usage ;;
    w1 | w2 | w3 | w4 | w5 | scale) SEL+=("$1") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
  shift
done
[ ${#SEL[@]} -gt 0 ] || SEL=(w1 w2 w3 w4 w5 scale)

if [ "$QUICK" = 1 ]; then
  SHORT=${RUNS:-1}; LONG=${RUNS:-1}; OUT=bench/quick
  W1_SIZE=$((32 * 1024)); W4_SIZE=$((16 * 1024)); W5_SIZE=$((64 * 1024))
  SCALE_SIZES=(); SCALE_BAUDS=(57600 230400); SCALE_BAUD_SIZE=$W1_SIZE
else
  SHORT=${RUNS:-3}; LONG=${RUNS:-1}; OUT=bench
  W1_SIZE=$((256 * 1024)); W4_SIZE=$((64 * 1024)); W5_SIZE=$((1024 * 1024))
  SCALE_SIZES=($((32 * 1024)) $((1024 * 1024))); SCALE_BAUDS=(57600 230400)
  SCALE_BAUD_SIZE=$W1_SIZE
fi

# Fail fast on what is missing.
command -v stm32flash >/dev/null || {
  echo "bench: stm32flash is missing; it is the reference every workload compares against." >&2
  echo "       Install it: apt-get install stm32flash (Debian/Ubuntu; .ci/run does this)." >&2
  exit 1
}
command -v python3 >/dev/null || { echo "bench: python3 is missing" >&2; exit 1; }
HAVE_LOADER=1
if ! python3 -c 'import importlib.metadata as m, serial, stm32loader.main
assert m.version("stm32loader") == "0.7.1"' >/dev/null 2>&1; then
  HAVE_LOADER=0
  echo "bench: stm32loader 0.7.1 is not installed: its rows are skipped" \
       "(python3 -m pip install stm32loader==0.7.1 pyserial)" >&2
fi
python3 -c 'import matplotlib' 2>/dev/null ||
  echo "bench: matplotlib is missing: no plot (python3 -m pip install matplotlib)" >&2

cargo build --release --quiet
REPORT=$ROOT/scripts/bench_report.py
LOADER=$ROOT/tests/clients/stm32loader_url.py
RUN=$(mktemp -d)
# A copy of the binary (client and simulator), so that a rebuild of the shared target directory
# during the run cannot change what is measured half-way.
cp -p "$ROOT/target/release/stm32boot" "$RUN/stm32boot"
BIN=$RUN/stm32boot
RAW=$RUN/raw.csv
SIM_PID=
cleanup() {
  if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
  rm -rf "$RUN"
}
trap cleanup EXIT
# stm32boot's journal (pages saved before an erase) and state go to the scratch directory.
export STM32BOOT_JOURNAL=$RUN/journal STM32BOOT_STATE_DIR=$RUN/state

py() { python3 "$REPORT" "$@"; }

# ---------------------------------------------------------------------------------------------
# One run: a fresh simulated chip (a copy of $INIT_STATE, or blank), the tool, the chip's exit
# report, and a check of its flash against $EXPECT. The workload sets W PART SPEC SIZE BAUD
# RTT_MS CHECKSUM IMAGE EXPECT INIT_STATE; `measure TOOL RUN -- STEP [:: STEP...]` runs the steps
# ({PORT} is the pty path or the rfc2217:// URL) and appends a row to $RAW.
# ---------------------------------------------------------------------------------------------

sim_start() { # SPEC pty|rfc2217
  rm -f "$RUN/tty" "$RUN/chip.sim" "$RUN/sim.out" "$RUN/port"
  if [ -n "${INIT_STATE:-}" ]; then cp "$INIT_STATE" "$RUN/chip.sim"; fi
  if [ "$2" = pty ]; then
    "$BIN" --json sim "$1" --pty --link "$RUN/tty" --state "$RUN/chip.sim" \
      >"$RUN/sim.out" 2>"$RUN/sim.err" &
  else
    "$BIN" --json sim "$1" --rfc2217 127.0.0.1:0 --state "$RUN/chip.sim" \
      >"$RUN/sim.out" 2>"$RUN/sim.err" &
  fi
  SIM_PID=$!
  local line
  for _ in $(seq 200); do
    if [ "$2" = pty ]; then
      if [ -e "$RUN/tty" ]; then echo "$RUN/tty" >"$RUN/port"; return 0; fi
    else
      line=$(head -n1 "$RUN/sim.out" 2>/dev/null || true)
      if [[ $line == rfc2217://* ]]; then echo "$line" >"$RUN/port"; return 0; fi
    fi
    kill -0 "$SIM_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench: the simulator did not start ($1, $2):" >&2
  cat "$RUN/sim.err" >&2
  exit 1
}

sim_stop() {
  kill -TERM "$SIM_PID" 2>/dev/null || true
  wait "$SIM_PID" 2>/dev/null || true
  SIM_PID=
}

RUN_NO=0
measure() { # TOOL RUN -- STEPS...
  local tool=$1 run=$2 endpoint=pty
  shift 3
  [ "$tool" = stm32loader ] && endpoint=rfc2217
  RUN_NO=$((RUN_NO + 1))
  local log=$RUN/logs/$RUN_NO-$W-$PART-$tool.log
  mkdir -p "$RUN/logs"
  sim_start "$SPEC" "$endpoint"
  py exec "$RUN/exec.json" "$log" "$RUN/port" -- "$@"
  sim_stop
  py record "$RAW" exec="$RUN/exec.json" simreport="$RUN/sim.out" state="$RUN/chip.sim" \
    expect="${EXPECT:-}" image="${IMAGE:-}" log="$log" workload="$W" part="$PART" tool="$tool" \
    size="$SIZE" baud="$BAUD" run="$run" rtt_ms="${RTT_MS:-0}" checksum="${CHECKSUM:-0}" \
    sim="$SPEC" || true
  # Keep a failed run's logs (the scratch directory goes at exit).
  if tail -n1 "$RAW" | grep -q ',failed$'; then
    mkdir -p "$OUT/failed"
    cp "$log" "$OUT/failed/"
    cp "$RUN/sim.out" "$OUT/failed/$RUN_NO-sim.out"
    cp "$RUN/sim.err" "$OUT/failed/$RUN_NO-sim.err"
  fi
}

# Part labels: PART (as reported) -> sim part, stm32loader family, extra sim options.
part_spec() { # LABEL TIMING -> sets PART SPEC FAMILY CHECKSUM
  PART=$1
  case $1 in
    stm32f411) SPEC="stm32f411?$2"; FAMILY=F4; CHECKSUM=0 ;;
    stm32l476) SPEC="stm32l476?$2"; FAMILY=L4; CHECKSUM=0 ;;
    stm32l476+A1) SPEC="stm32l476?$2&version=0x33"; FAMILY=L4; CHECKSUM=1 ;;
    *) echo "bench: unknown part label $1" >&2; exit 1 ;;
  esac
}

image() { # SIZE [sparse] -> path of a seeded image (the same bytes in every run)
  local f=$RUN/img-$1${2:+-$2}.bin
  [ -e "$f" ] || py image "$f" "$1" 9 ${2:+--sparse}
  echo "$f"
}

# write + verify of $IMAGE at the start of flash, by each tool; runs: stm32boot N_BOOT,
# stm32flash N_FLASH, stm32loader N_LOADER (0 = not run), interleaved run by run.
write_verify() { # N_BOOT N_FLASH N_LOADER
  local n=$1 i
  [ "$2" -gt "$n" ] && n=$2
  [ "$3" -gt "$n" ] && n=$3
  for i in $(seq "$n"); do
    if [ "$i" -le "$1" ]; then
      measure stm32boot "$i" -- "$BIN" write --no-config "$IMAGE" -a 0x08000000 --verify \
        --port '{PORT}' --baud "$BAUD" --parity none
    fi
    if [ "$i" -le "$2" ]; then
      measure stm32flash "$i" -- stm32flash -b "$BAUD" -m 8n1 -w "$IMAGE" -v -S 0x08000000 '{PORT}'
    fi
    if [ "$i" -le "$3" ]; then
      measure stm32loader "$i" -- python3 "$LOADER" -p '{PORT}' -f "$FAMILY" -b "$BAUD" \
        -e -w -v "$IMAGE"
    fi
  done
}

heading() {
  echo
  echo "## $*"
}

loader_runs() { [ "$HAVE_LOADER" = 1 ] && echo "$1" || echo 0; }

# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------

w1() {
  heading "W1: write + verify, $((W1_SIZE / 1024)) KiB random image, 115200 baud, typical timing"
  W=w1 SIZE=$W1_SIZE BAUD=115200 RTT_MS=0 INIT_STATE=
  IMAGE=$(image "$SIZE"); EXPECT=$IMAGE
  for label in stm32f411 stm32l476; do
    part_spec $label timing=typical
    write_verify "$SHORT" "$SHORT" "$(loader_runs "$LONG")"
  done
  # What-if: the same L4 part with Get Checksum. stm32loader 0.7.1 never uses 0xA1, stm32flash
  # only for -C: their runs would repeat stm32l476's, so stm32flash runs once for the ratio.
  part_spec stm32l476+A1 timing=typical
  write_verify "$SHORT" "$LONG" 0
}

w2() {
  heading "W2: write + verify, $((W1_SIZE / 1024)) KiB image, 75 % erased value, 115200 baud"
  W=w2 SIZE=$W1_SIZE BAUD=115200 RTT_MS=0 INIT_STATE=
  IMAGE=$(image "$SIZE" sparse); EXPECT=$IMAGE
  # stm32loader writes every block, erased or not, as in W1: not repeated here.
  part_spec stm32l476 timing=typical
  write_verify "$SHORT" "$SHORT" 0
  part_spec stm32l476+A1 timing=typical
  write_verify "$SHORT" "$LONG" 0
}

w3() {
  heading "W3: 64-byte coefficient update in a 2 KB page of firmware, stm32l476, 115200 baud"
  # The chip holds 64 KiB of firmware (written in-process, then marked as a bootloader that has
  # just been reset and awaits its 0x7F); the block goes to 0x08007C40, inside page 15
  # (0x08007800-0x08007FFF), which the firmware fills.
  local fw=$RUN/w3-fw.bin coeff=$RUN/w3-coeff.bin prepared=$RUN/w3-prepared.sim i
  py fill "$fw" $((64 * 1024)) 3
  py fill "$coeff" 64 4
  rm -f "$prepared"
  "$BIN" write --no-config -q "$fw" -a 0x08000000 --port "sim:stm32l476?state=$prepared"
  py unsync "$prepared"
  py patch "$RUN/w3-expect.bin" "$fw" 0x7C40 "$coeff"
  W=w3 SIZE=64 BAUD=115200 RTT_MS=0 INIT_STATE=$prepared IMAGE= EXPECT=$RUN/w3-expect.bin
  # stm32loader 0.7.1 cannot do this job: `-e -a -l` computes page numbers from a 1 KB page on
  # L4 (its per-family constant; the L476 has 2 KB pages), so it would erase the wrong page.
  for label in stm32l476 stm32l476+A1; do
    part_spec $label timing=typical
    for i in $(seq "$SHORT"); do
      measure stm32boot "$i" -- "$BIN" write --no-config "$coeff" -a 0x08007C40 --verify \
        --port '{PORT}' --baud "$BAUD" --parity none
      measure stm32flash "$i" -- \
        stm32flash -b "$BAUD" -m 8n1 -r "$RUN/page.bin" -S 0x08007800:2048 '{PORT}' :: \
        @patch "$RUN/page.bin" 0x440 "$coeff" :: \
        stm32flash -b "$BAUD" -m 8n1 -w "$RUN/page.bin" -v -S 0x08007800 '{PORT}'
    done
  done
}

w4() {
  heading "W4: write + verify, $((W4_SIZE / 1024)) KiB random image, 150 ms round trip, stm32f411"
  # stm32loader is left out: stop-and-wait at 150 ms puts one run past four minutes.
  W=w4 SIZE=$W4_SIZE BAUD=115200 RTT_MS=150 INIT_STATE=
  IMAGE=$(image "$SIZE"); EXPECT=$IMAGE
  part_spec stm32f411 "timing=typical&latency=150ms"
  write_verify "$LONG" "$LONG" 0
}

w5() {
  heading "W5: CPU time, $((W5_SIZE / 1024)) KiB random image, timing=fast, stm32l476"
  W=w5 SIZE=$W5_SIZE BAUD=115200 RTT_MS=0 INIT_STATE=
  IMAGE=$(image "$SIZE"); EXPECT=$IMAGE
  part_spec stm32l476 timing=fast
  write_verify "$SHORT" "$SHORT" "$(loader_runs "$SHORT")"
}

scale() {
  heading "Scaling: W1 on stm32l476 at other sizes and baud rates"
  W=scale RTT_MS=0 INIT_STATE=
  part_spec stm32l476 timing=typical
  local size baud n
  local sizes=("${SCALE_SIZES[@]}")
  # The 256 KiB / 115200 point is W1's; run it here only when W1 is not part of this run.
  [[ " ${SEL[*]} " == *" w1 "* ]] || sizes+=("$W1_SIZE")
  for size in "${sizes[@]}"; do
    SIZE=$size BAUD=115200
    IMAGE=$(image "$SIZE"); EXPECT=$IMAGE
    n=$SHORT; [ "$size" -ge $((1024 * 1024)) ] && n=$LONG
    write_verify "$n" "$n" 0
  done
  for baud in "${SCALE_BAUDS[@]}"; do
    SIZE=$SCALE_BAUD_SIZE BAUD=$baud
    IMAGE=$(image "$SIZE"); EXPECT=$IMAGE
    n=$SHORT; [ "$baud" -le 57600 ] && n=$LONG
    write_verify "$n" "$n" 0
  done
}

mkdir -p "$OUT"
rm -rf "$OUT/failed"
exec 3>&1 4>&2 > >(tee "$OUT/results.txt") 2>&1
TEE_PID=$!
START=$(date +%s)
echo "stm32boot $("$BIN" --version | awk '{print $2}')" \
     "vs stm32flash $(dpkg-query -W -f '${Version}' stm32flash 2>/dev/null || echo '(version unknown)')" \
     "and stm32loader $([ "$HAVE_LOADER" = 1 ] && echo 0.7.1 || echo '(not installed)');" \
     "$(nproc) CPU(s); runs: $SHORT (short workloads), $LONG (long ones)"
# Which source was measured (read-only git queries; --no-optional-locks leaves the index alone).
if REV=$(git --no-optional-locks rev-parse --short HEAD 2>/dev/null); then
  DIRTY=$(git --no-optional-locks status --porcelain -- src Cargo.toml Cargo.lock build.rs | wc -l)
  echo "source: commit $REV$([ "$DIRTY" -gt 0 ] && echo " + $DIRTY uncommitted change(s) in src/Cargo")," \
       "release build of $(date -r "$BIN" '+%Y-%m-%d %H:%M')"
fi
for w in "${SEL[@]}"; do "$w"; done
echo
ELAPSED=$(($(date +%s) - START))
echo "measured in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
RC=0
py report "$RAW" "$OUT" $([ "$QUICK" = 1 ] && echo --quick) || RC=$?
echo "printout: $OUT/results.txt"
exec >&3 2>&4
wait "$TEE_PID" 2>/dev/null || true
exit $RC
