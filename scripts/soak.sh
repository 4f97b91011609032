#!/usr/bin/env bash
# Fault soak (issue 10): seeded runs of write + verify, partial coefficient updates and
# option-byte changes against the simulator, with byte noise and drops (1e-5 to 1e-3), NACK
# bursts, link cuts, device resets and power loss mid-programming. Prints the counts per fault
# class; exits non-zero on any silent corruption, lost byte, hang, unclear error or unrepaired
# run, or if fewer than 99 % of the runs at 1e-4 noise succeed without a re-run.
#
#   scripts/soak.sh                 500 runs from seed 1
#   scripts/soak.sh --runs 2000 --seed 1000
#   scripts/soak.sh --time 3600     as many runs as fit in an hour
#   scripts/soak.sh --only 123      replay the run of seed 123 (of a soak from --seed, default 1),
#                                   keeping its files and a --trace of the faulted command
#
# The counts also go to bench/soak.json (--report FILE to change). Every run is replayed
# exactly by its seed: the simulated link runs on a virtual clock, so nothing depends on the
# machine's speed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=500 seed=1 time="" only="" report="bench/soak.json" verbose=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --time) time="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --report) report="$2"; shift 2 ;;
    --verbose) verbose=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

export SOAK_RUNS="$runs" SOAK_SEED="$seed"
[ -n "$time" ] && export SOAK_SECONDS="$time"
[ -n "$verbose" ] && export SOAK_VERBOSE=1
if [ -n "$only" ]; then
  export SOAK_ONLY="$only" SOAK_TRACE=1 SOAK_VERBOSE=1
else
  mkdir -p "$(dirname "$report")"
  export SOAK_REPORT="$PWD/$report"
fi
exec cargo test --release --locked --test soak soak_long -- --ignored --nocapture
