#!/usr/bin/env bash
# Benchmark: stm32boot and stm32flash side by side, in one run, on the simulator with typical
# timing at 115200 baud: write with verify of a 256 KiB random image into an STM32F411.
#
# Both tools reach the simulator through a pseudo-terminal, which carries no parity, so both run
# 8N1 (stm32flash needs -m 8n1 on a pty): 10 bits per character. For each tool the script prints
# the wall time, the ratio between the tools, and the ratio to the wire-rate lower bound: the
# bytes the protocol must move for this job (every phase of every Write Memory and every Read
# Memory of the read-back verify, both ways), at the line rate, plus the part's typical erase and
# programming time as the simulator reports it. It also prints the bytes each tool actually moved.
#
# A second workload (W4, `latency`) runs a 64 KiB write with verify at a 150 ms round trip
# through the simulator's latency model (75 ms each way, on the same pty), both tools through
# the same link, and prints each tool's time and round trips (counted by the simulator: host
# sends that followed a reply) and the ratio, against the 0.45 target.
#
# Usage: scripts/bench.sh [wire [SIZE_KIB]] [latency]   (default: both, 256 KiB).
# Needs stm32flash (Debian package). The latency workload takes about five minutes, most of it
# stm32flash's.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOADS=()
SIZE_KIB=256
while [ $# -gt 0 ]; do
  case $1 in
    wire) WORKLOADS+=(wire); if [[ ${2:-} =~ ^[0-9]+$ ]]; then SIZE_KIB=$2; shift; fi ;;
    latency) WORKLOADS+=(latency) ;;
    [0-9]*) SIZE_KIB=$1 ;;
    *) echo "usage: scripts/bench.sh [wire [SIZE_KIB]] [latency]" >&2; exit 2 ;;
  esac
  shift
done
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(wire latency)
PART=stm32f411
BAUD=115200
BITS=10
SIM_OPTS="timing=typical"

command -v stm32flash >/dev/null || { echo "stm32flash is missing: apt-get install stm32flash" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/stm32boot
RUN=$(mktemp -d)
SIM_PID=
cleanup() {
  if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
  rm -rf "$RUN"
}
trap cleanup EXIT


now() { printf '%s\n' "$EPOCHREALTIME"; }

# Start a fresh simulated chip on a pty; its exit report (JSON) goes to $1.
start_sim() {
  rm -f "$RUN/tty" "$RUN/chip.sim"
  "$BIN" --json sim "$PART?$SIM_OPTS" --pty --link "$RUN/tty" --state "$RUN/chip.sim" \
    >"$1" 2>"$RUN/sim.err" &
  SIM_PID=$!
  for _ in $(seq 100); do [ -e "$RUN/tty" ] && return 0; sleep 0.1; done
  echo "the simulator did not start:" >&2; cat "$RUN/sim.err" >&2; exit 1
}

stop_sim() {
  kill -TERM "$SIM_PID"; wait "$SIM_PID" || true; SIM_PID=
}

# run NAME COMMAND...: time one tool against a fresh chip; prints
# "seconds bytes flash_ms round_trips".
run() {
  local name=$1; shift
  start_sim "$RUN/$name.json"
  local t0 t1
  t0=$(now)
  "$@" >"$RUN/$name.log" 2>&1 || { echo "$name failed:" >&2; cat "$RUN/$name.log" >&2; exit 1; }
  t1=$(now)
  stop_sim
  python3 - "$RUN/$name.json" "$t0" "$t1" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
report = json.loads(lines[-1])
print(float(sys.argv[3]) - float(sys.argv[2]),
      report["bytes_to_device"] + report["bytes_to_host"],
      report["flash_time_ms"], report["round_trips"])
EOF
}

wire_workload() {
  SIM_OPTS="timing=typical"
  head -c $((SIZE_KIB * 1024)) /dev/urandom > "$RUN/image.bin"
  echo "workload: write + verify of a ${SIZE_KIB} KiB random image, $PART, typical timing," \
       "$BAUD baud 8N1 on a pty"
  read -r T_FLASH B_FLASH F_FLASH _ < <(run stm32flash \
    stm32flash -b $BAUD -m 8n1 -w "$RUN/image.bin" -v -S 0x08000000 "$RUN/tty")
  read -r T_OURS B_OURS F_OURS _ < <(run stm32boot \
    "$BIN" write "$RUN/image.bin" -a 0x08000000 --verify --port "$RUN/tty" --baud $BAUD --parity none)

  python3 - "$SIZE_KIB" "$BAUD" "$BITS" "$T_FLASH" "$B_FLASH" "$F_FLASH" "$T_OURS" "$B_OURS" "$F_OURS" <<'EOF'
import sys
size_kib, baud, bits = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows = [("stm32flash",) + tuple(map(float, sys.argv[4:7])),
        ("stm32boot",) + tuple(map(float, sys.argv[7:10]))]
blocks = size_kib * 1024 // 256
# Write Memory: 31 CE / 79 / addr+X / 79 / N data X / 79 = 268 bytes per 256-byte block;
# Read Memory: 11 EE / 79 / addr+X / 79 / N ~N / 79 data = 268; plus connect and one erase.
protocol_bytes = blocks * (268 + 268)
char = bits / baud
flash_s = min(r[3] for r in rows) / 1000.0
bound = protocol_bytes * char + flash_s
print(f"lower bound: {protocol_bytes} bytes at {baud} baud ({protocol_bytes * char:.2f} s)"
      f" + flash {flash_s:.2f} s = {bound:.2f} s")
print(f"{'tool':<12}{'time (s)':>10}{'bytes moved':>14}{'x bound':>10}")
for name, t, moved, _ in rows:
    print(f"{name:<12}{t:>10.2f}{int(moved):>14}{t / bound:>10.3f}")
print(f"stm32boot / stm32flash: {rows[1][1] / rows[0][1]:.3f}")
EOF
}

latency_workload() {
  SIM_OPTS="timing=typical&latency=150ms"
  head -c $((64 * 1024)) /dev/urandom > "$RUN/image.bin"
  echo "workload: write + verify of a 64 KiB random image, $PART, typical timing, 150 ms round" \
       "trip, $BAUD baud 8N1 on a pty"
  read -r T_FLASH _ _ R_FLASH < <(run stm32flash \
    stm32flash -b $BAUD -m 8n1 -w "$RUN/image.bin" -v -S 0x08000000 "$RUN/tty")
  read -r T_OURS _ _ R_OURS < <(run stm32boot \
    "$BIN" write "$RUN/image.bin" -a 0x08000000 --verify --port "$RUN/tty" --baud $BAUD --parity none)
  python3 - "$T_FLASH" "$R_FLASH" "$T_OURS" "$R_OURS" <<'EOF'
import sys
tf, rf, to, ro = map(float, sys.argv[1:5])
print(f"{'tool':<12}{'time (s)':>10}{'round trips':>13}{'per KiB':>9}")
for name, t, r in (("stm32flash", tf, rf), ("stm32boot", to, ro)):
    print(f"{name:<12}{t:>10.2f}{int(r):>13}{r / 64:>9.2f}")
ratio = to / tf
print(f"stm32boot / stm32flash: {ratio:.3f} (target <= 0.45: {'met' if ratio <= 0.45 else 'NOT met'})")
EOF
}

for w in "${WORKLOADS[@]}"; do
  "${w}_workload"
  echo
done
