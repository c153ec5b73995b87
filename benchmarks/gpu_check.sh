#!/usr/bin/env bash
# The one command for a machine with a GPU: build genfast, run the whole test suite on CUDA, run
# compute-sanitizer (memcheck, racecheck) over the CUDA op tests, `genfast bench --json` for every op
# at both sizes, and the graph-captured sampling loop against diffusers when diffusers is importable.
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Writes OUTDIR/summary.md (one line per step: status, seconds, the line that matters), the bench
# JSON files, OUTDIR/logs/*.log and OUTDIR/logs.tar.gz. Every step has a time limit and a failed or
# timed-out step does not stop the next one; the default limits add up to under 10 minutes (the
# whole run on an H100). Exit status: 0 when every step passed or was skipped, 1 otherwise, 2 when
# there is no CUDA device.
#
# Environment:
#   PYTHON=python3            the interpreter that has torch (the lent H100/H200 machines: python3)
#   GPU_CHECK_DRY_RUN=1       print each step's command and write the summary; run nothing
#   GPU_CHECK_COMPACT=1       leave only summary.md, the bench JSON and logs.tar.gz in OUTDIR (the
#                             device tool brings back at most 8 files)
#   GPU_CHECK_WHEELS=DIR      wheels to install first into OUTDIR/site (e.g. diffusers and its
#                             needs, carried to a machine without network); default: .whl if present
#   GPU_CHECK_SKIP="a b"      steps to skip (env build tests memcheck racecheck bench_small bench_default
#                             sampling)
#   GPU_CHECK_T_<STEP>=SEC    the time limit of a step (defaults below)
#   COMPUTE_SANITIZER=PATH    compute-sanitizer to use (default: on PATH, else /usr/local/cuda/bin)
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 64
fi
OUT=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY_RUN:-0}
SKIP=" ${GPU_CHECK_SKIP:-} "
mkdir -p "$OUT/logs" || exit 64
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
SUMMARY=$OUT/summary.md
cd "$ROOT" || exit 64

# Time limits (seconds). Sum: 590 s with the wheels, under the 10 minutes of the device tool's
# longest command (a step that ends early leaves its time unused: a passing run takes far less).
T_WHEELS=${GPU_CHECK_T_WHEELS:-20}
T_ENV=${GPU_CHECK_T_ENV:-20}
T_BUILD=${GPU_CHECK_T_BUILD:-140}
T_INFO=${GPU_CHECK_T_INFO:-15}
T_TESTS=${GPU_CHECK_T_TESTS:-150}
T_MEMCHECK=${GPU_CHECK_T_MEMCHECK:-70}
T_RACECHECK=${GPU_CHECK_T_RACECHECK:-50}
T_BENCH_SMALL=${GPU_CHECK_T_BENCH_SMALL:-25}
T_BENCH_DEFAULT=${GPU_CHECK_T_BENCH_DEFAULT:-45}
T_SAMPLING=${GPU_CHECK_T_SAMPLING:-55}

FAILED=0
ROWS=()

# run_step NAME LIMIT DETAIL_FN COMMAND...: run COMMAND with a time limit, its output in logs/NAME.log,
# and add a summary row. DETAIL_FN prints the row's detail from the log (empty: the log's last line).
run_step() {
    local name=$1 limit=$2 detail_fn=$3
    shift 3
    local log=$LOGS/$name.log
    if [[ "$SKIP" == *" $name "* ]]; then
        ROWS+=("| $name | skipped | 0 | GPU_CHECK_SKIP |")
        return
    fi
    if [ "$DRY" = 1 ]; then
        echo "[dry-run] $name (limit ${limit}s): $*"
        ROWS+=("| $name | dry-run | 0 | \`$*\` |")
        return
    fi
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS rc status detail
    # (through bash, so that a step may be one of the exported functions below)
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timeout (${limit}s)"; FAILED=1 ;;
        *) status="fail (exit $rc)"; FAILED=1 ;;
    esac
    detail=""
    [ -n "$detail_fn" ] && detail=$($detail_fn "$log" 2>/dev/null)
    [ -z "$detail" ] && detail=$(grep -v '^\s*$' "$log" | tail -n 1)
    detail=${detail//|/\\|}
    ROWS+=("| $name | $status | $((SECONDS - start)) | ${detail:0:300} |")
    echo "   $status in $((SECONDS - start)) s: ${detail:0:200}"
}

# A step whose stdout is data (JSON): stdout to FILE, stderr to the log.
run_to_file() {
    local file=$1
    shift
    "$@" >"$file"
}

pytest_result() { grep -E '(passed|failed|error|skipped)( |,|$)' "$1" | grep -E ' in [0-9.]+s' | tail -n 1; }
sanitizer_result() { grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "$1" | tail -n 2 | tr '\n' ' '; \
                     pytest_result "$1"; }
# (called as `bench_result JSON LOG`)
bench_result() { "$PYTHON" -c "import json,sys; d=json.load(open(sys.argv[1])); print(len(d.get('rows', [])), 'rows')" \
                 "$1" 2>/dev/null; }

if [ "$DRY" != 1 ] && [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
        echo "no CUDA device visible to $PYTHON: nothing to check here" | tee "$SUMMARY"
        exit 2
    fi
fi

# Carried wheels (diffusers and what it needs) into a private site folder.
WHEELS=${GPU_CHECK_WHEELS:-}
[ -z "$WHEELS" ] && [ -d .whl ] && WHEELS=.whl
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    run_step wheels "$T_WHEELS" "" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$OUT/site" "$WHEELS"/*.whl
    export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
fi

SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
CUDA_OP_TESTS=(tests/test_random.py tests/test_diffusion_ops.py tests/test_gradient_penalty.py tests/test_vae.py)
export PYTHON SANITIZER PYTHONUNBUFFERED=1

env_report() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1
    command -v nvcc >/dev/null && nvcc --version | tail -n 1
    echo "compute-sanitizer: $SANITIZER"
    "$PYTHON" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -n 1
}
export -f run_to_file env_report
env_detail() { grep -E '^(python|NVIDIA|.*H100|.*H200)' "$1" | head -n 2 | tr '\n' ' '; }

run_step env "$T_ENV" env_detail env_report
run_step build "$T_BUILD" "" "$PYTHON" -m pip install -e . --no-build-isolation
run_step info "$T_INFO" "" "$PYTHON" -m genfast info
# The whole suite, CUDA cases included (conftest runs Triton compiled when a GPU is present). The
# codegen gate is left to CI: here the kernels are compiled and run for real.
run_step tests "$T_TESTS" pytest_result "$PYTHON" -m pytest -q -p no:cacheprovider \
    --ignore=tests/test_triton_codegen.py
# The CUDA op tests under compute-sanitizer. PyTorch's caching allocator would hide an access past a
# tensor inside its pool: turn it off so that memcheck sees each tensor's own allocation.
run_step memcheck "$T_MEMCHECK" sanitizer_result env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool memcheck --error-exitcode 86 --print-limit 20 \
    "$PYTHON" -m pytest -q -p no:cacheprovider "${CUDA_OP_TESTS[@]}" -k cuda
run_step racecheck "$T_RACECHECK" sanitizer_result \
    "$SANITIZER" --tool racecheck --error-exitcode 86 --print-limit 20 \
    "$PYTHON" -m pytest -q -p no:cacheprovider "${CUDA_OP_TESTS[@]}" -k cuda
# Every op, both sizes (genfast bench's own sizes: small and default).
BENCH_SIZES=(small default)
if [ "$DRY" != 1 ] && ! "$PYTHON" -m genfast bench --help 2>/dev/null | grep -q -- '--size'; then
    BENCH_SIZES=(default)  # an older genfast without --size: its one size
fi
for size in "${BENCH_SIZES[@]}"; do
    limit_var=T_BENCH_${size^^}
    size_args=(--size "$size")
    [ "${#BENCH_SIZES[@]}" = 1 ] && size_args=()
    run_step "bench_$size" "${!limit_var}" "bench_result $OUT/bench_$size.json" \
        run_to_file "$OUT/bench_$size.json" "$PYTHON" -m genfast bench --json --device cuda "${size_args[@]}"
done
# The graph-captured DDIM loop against diffusers' (only when diffusers can be imported).
if [ "$DRY" = 1 ] || "$PYTHON" -c "import diffusers" >/dev/null 2>&1; then
    run_step sampling "$T_SAMPLING" "" "$PYTHON" benchmarks/bench_sampling_loop.py --reps 3
else
    ROWS+=("| sampling | skipped | 0 | diffusers is not importable (carry its wheels: GPU_CHECK_WHEELS) |")
fi

{
    echo "# genfast GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    [ -f "$LOGS/env.log" ] && sed 's/^/    /' "$LOGS/env.log"
    echo
    echo "| step | status | s | detail |"
    echo "|---|---|---:|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$SUMMARY"
if [ "$DRY" != 1 ]; then
    tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs 2>/dev/null
    [ "${GPU_CHECK_COMPACT:-0}" = 1 ] && rm -rf "$LOGS"
fi
echo "summary: $SUMMARY"
cat "$SUMMARY"
exit $FAILED
