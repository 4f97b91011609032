#!/usr/bin/env bash
# Fuzz the parsers and the client session with cargo-fuzz (libFuzzer), on the STABLE toolchain.
#
#   scripts/fuzz.sh [--ci] [--time SECONDS] [TARGET...]
#
# Builds every target, replays the regression inputs in fuzz/regressions/<target>/, then runs
# each TARGET (default: all) for SECONDS (default 600; 20 with --ci), seeded from
# fuzz/seeds/<target>/ and growing fuzz/corpus/<target>/ (ignored by git). Exits non-zero if
# any target crashes, times out or runs out of memory, and prints the input that did it
# (fuzz/artifacts/<target>/...). Appends a line per timed run to fuzz/hours.csv:
# date,revision,target,seconds,executions,result.
#
# cargo-fuzz normally wants nightly for -Zsanitizer; RUSTC_BOOTSTRAP=1 lets the stable compiler
# accept it, and stable ships the AddressSanitizer runtime (librustc-stable_rt.asan.a), so
# `-s address` works without nightly. Where a toolchain named stable is installed it is used
# (RUSTUP_TOOLCHAIN), so a nightly next to it changes nothing; otherwise the default one.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(hex srec elf coeffs job config port_url sequence session)

ci=0
time_per_target=""
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) ci=1 ;;
        --time)
            [ $# -ge 2 ] || { echo "fuzz.sh: --time needs a number of seconds" >&2; exit 2; }
            time_per_target="$2"
            shift
            ;;
        --time=*) time_per_target="${1#--time=}" ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *)
            if [[ " ${ALL_TARGETS[*]} " != *" $1 "* ]]; then
                echo "fuzz.sh: unknown target $1 (targets: ${ALL_TARGETS[*]})" >&2
                exit 2
            fi
            targets+=("$1")
            ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
if [ -z "$time_per_target" ]; then
    if [ "$ci" = 1 ]; then time_per_target=20; else time_per_target=600; fi
fi
if ! [[ "$time_per_target" =~ ^[0-9]+$ ]]; then
    echo "fuzz.sh: --time takes whole seconds, not '$time_per_target'" >&2
    exit 2
fi

if rustup toolchain list 2>/dev/null | grep -q '^stable'; then export RUSTUP_TOOLCHAIN=stable; fi
export RUSTC_BOOTSTRAP=1
SANITIZER=address

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# The largest input worth trying, per target.
max_len() {
    case "$1" in
        hex|srec) echo 65536 ;;
        elf) echo 16384 ;;
        coeffs|job|config) echo 8192 ;;
        port_url|sequence) echo 512 ;;
        session) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

# Optimised, with debug assertions and overflow checks (cargo-fuzz's default, spelled out).
FUZZ_FLAGS=(-s "$SANITIZER" --release --debug-assertions)
cd fuzz
echo "== building ${targets[*]} (sanitizer: $SANITIZER)" >&2
for t in "${targets[@]}"; do
    cargo fuzz build "${FUZZ_FLAGS[@]}" "$t"
done
# The runs use the binaries just built, not `cargo fuzz run`, which would rebuild mid-way if
# the sources changed and count the build as fuzzing time.
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="target/$triple/release"

failed=()
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- .. 2>/dev/null; then revision="$revision+dirty"; fi
[ -f hours.csv ] || echo "date,revision,target,seconds,executions,result" > hours.csv

report_artifact() {
    local target="$1" log="$2"
    local artifact
    artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //' || true)
    grep -E -A1 '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY)' "$log" | head -8 >&2 || true
    if [ -n "$artifact" ]; then
        artifact=$(realpath --relative-to=.. "$artifact" 2>/dev/null || echo "$artifact")
        echo "fuzz.sh: $target: FAILED; input: $artifact" >&2
        echo "  reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s $SANITIZER $target ../$artifact)" >&2
    fi
    mkdir -p "artifacts/$target"
    cp "$log" "artifacts/$target/fuzz.log"
    echo "  log: fuzz/artifacts/$target/fuzz.log" >&2
}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# 1. Regressions: every input that once crashed must still pass.
for t in "${targets[@]}"; do
    dir="regressions/$t"
    if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        echo "== replaying $dir" >&2
        log="$logs/$t.replay.log"
        mkdir -p "artifacts/$t"
        if ! "$bin_dir/$t" -runs=0 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="artifacts/$t/" \
            "$dir" >"$log" 2>&1; then
            report_artifact "$t" "$log"
            failed+=("$t (regression)")
        fi
    fi
done

# 2. Timed runs, each from its seeds and its growing corpus: one libFuzzer process on one core
# at a time (no -jobs/-workers: -jobs=1 would fork a child that logs to fuzz-0.log instead).
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "== fuzzing $t for ${time_per_target}s" >&2
    log="$logs/$t.log"
    start=$(date +%s)
    result=ok
    if ! "$bin_dir/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$time_per_target" -max_len="$(max_len "$t")" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        "corpus/$t" "${seeds[@]}" >"$log" 2>&1; then
        result=crash
        report_artifact "$t" "$log"
        failed+=("$t")
    fi
    seconds=$(( $(date +%s) - start ))
    # libFuzzer's own count of the time spent fuzzing, where it printed one.
    done_s=$(grep -o '^Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*' | tail -1 || true)
    [ -z "$done_s" ] || seconds=$done_s
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
    [ -n "$execs" ] || execs=0
    rate=$(( execs / (seconds > 0 ? seconds : 1) ))
    echo "   $t: $execs executions in ${seconds}s ($rate/s): $result" >&2
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ),$revision,$t,$seconds,$execs,$result" >> hours.csv
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: failed: ${failed[*]}" >&2
    exit 1
fi
total=$(awk -F, 'NR > 1 { s += $4 } END { printf "%.1f", s / 3600 }' hours.csv)
echo "fuzz.sh: all targets passed (fuzz/hours.csv: ${total} fuzz hours so far)" >&2
