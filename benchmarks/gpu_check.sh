#!/usr/bin/env bash
# One prepared GPU check: installs privfl without network, runs the device tests and every
# benchmark on CUDA, then the bundled evaluation through the CLI with --device cuda.
#
#   bash benchmarks/gpu_check.sh OUTDIR        (on a machine with a CUDA GPU and torch)
#
# Wheels of the packages that machine lacks (opacus, dp-accounting, dm-tree, pydantic and its three
# dependencies) are made here by `bash benchmarks/gpu_wheels.sh` into .whl/ (git-ignored: name it in the
# device call's carry); they are installed into /tmp/site first. Every step has its own time limit and writes
# OUTDIR/<step>.log (at most 8 files); a failing step does not stop the others.
# Environment: PYTHON (default python3), DEVICE (default cuda; cpu for a dry run of the plumbing),
# QUICK=1 (tiny sizes, for the dry run), ONLY=issue17 (issue 17's shadow figure: 64 ResNet-8 reference
# models batched vs 8 one after another; PASS when batched is no slower), ONLY=issue18 (issue 18's GPU
# figures: IG rates on cnn6 / ResNet-18 at 1 and 64 victims, loop vs CUDA graph, against breaching's quoted
# rates; the device tests plus the CUDA-graph attack-step test; SME / fedavg-inversion rates the same way);
# ONLY="issue17 issue18" runs both in one call, at most 540 s by the steps' limits. What the open GPU issues
# need, from this machine:
#   bash benchmarks/gpu_wheels.sh
#   device run: ONLY="issue17 issue18" bash benchmarks/gpu_check.sh $OUT   carry [".whl"]   timeout_s 590
# Dry run of the same path on CPU, in a bare venv of the image's packages (see gpu_wheels.sh, PYVER=3.11):
#   DEVICE=cpu QUICK=1 ONLY="issue17 issue18" PYTHON=<venv>/bin/python bash benchmarks/gpu_check.sh /tmp/dry
# fl_round.log also holds that shadow-training figure in a full run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-gpu-check}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
START=$(date +%s)

step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    echo "== $name (t=$(( $(date +%s) - START )) s, limit ${limit} s): $*"
    timeout "$limit" "$@" >>"$OUTDIR/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc  (t=$(( $(date +%s) - START )) s)"
    tail -n "${TAIL:-25}" "$OUTDIR/$name.log" | sed 's/^/   | /'
}

if [ "$QUICK" = 1 ]; then
    FL_ARGS=(--clients 10 --steps 2 --repeats 1 --models mlp)
    AGG_ARGS=(--dims 2000 --repeats 1 --no-memory)
    MECH_ARGS=(--rows 10 --cols 1000 --repeats 1)
    LDP_ARGS=(--n 1000)
    INV_ARGS=(--only ig --images 1 --ig-iterations 20)
    RATE_ARGS=(--rate-iterations 3 --rate-victims 2)
    UPDATE_RATE_ARGS=(--rate-iterations 3 --rate-unrolled-iterations 2 --rate-victims 2)
    SHADOW_ARGS=(--models 4 --loop-models 2 --steps 3)
    printf 'name: tiny\nbase: {dataset: digits, num_clients: 4, rounds: 2, local_steps: 2, batch_size: 8, model: mlp}\nseeds: [0]\n' >"$OUTDIR/tiny.yaml"
    DEMO_SPEC=("$OUTDIR/tiny.yaml")
else
    FL_ARGS=(--repeats 3)
    AGG_ARGS=(--repeats 5)
    MECH_ARGS=(--repeats 5)
    LDP_ARGS=()
    INV_ARGS=(--only ig,sme --images 4)
    RATE_ARGS=(--rate-iterations 200 --rate-victims 64)
    UPDATE_RATE_ARGS=(--rate-iterations 100 --rate-unrolled-iterations 10 --rate-victims 64)
    SHADOW_ARGS=(--models 64 --loop-models 8 --steps 200)
    DEMO_SPEC=()
fi

{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi -L 2>&1 || true
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . &&
        "$PY" -c "import torch, privfl, opacus, dp_accounting; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
} >"$OUTDIR/install.log" 2>&1
echo "== install: $(tail -n 1 "$OUTDIR/install.log")"
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site

SHADOW=("$PY" benchmarks/shadow_training.py --device "$DEV" --model resnet --dataset natural-patches "${SHADOW_ARGS[@]}")
if [ -n "${ONLY:-}" ]; then  # one or more of issue17, issue18
    # limits sum to 540 s, plus ~20 s of install: give the device call timeout_s 590 (a step cut short keeps
    # what it printed, and $OUT comes back even when the call times out)
    case " ${ONLY//,/ } " in *" issue17 "*)
        step shadows 150 "${SHADOW[@]}" ;;
    esac
    case " ${ONLY//,/ } " in *" issue18 "*)
        step inversion 200 "$PY" benchmarks/inversion.py --device "$DEV" --only rates "${RATE_ARGS[@]}"
        step tests 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_graphed_attack_step.py
        step update_rates 90 "$PY" benchmarks/inversion.py --device "$DEV" --only update-rates \
            "${UPDATE_RATE_ARGS[@]}" ;;
    esac
    echo "== done in $(( $(date +%s) - START )) s"
    exit 0
fi
step tests 110 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py
step fl_round 80 "$PY" benchmarks/fl_round.py --device "$DEV" "${FL_ARGS[@]}"
step fl_round 150 "${SHADOW[@]}"
step aggregators 60 "$PY" benchmarks/aggregators.py --device "$DEV" "${AGG_ARGS[@]}"
step mechanisms 40 "$PY" benchmarks/mechanisms.py --device "$DEV" "${MECH_ARGS[@]}"
step mechanisms 30 "$PY" benchmarks/ldp.py --device "$DEV" "${LDP_ARGS[@]}"
step inversion 90 "$PY" benchmarks/inversion.py --device "$DEV" "${INV_ARGS[@]}"
step demo 130 "$PY" -m privfl.cli run "${DEMO_SPEC[@]}" --device "$DEV" --workers 4 --out "$OUTDIR/demo-run"
cp "$OUTDIR/demo-run/results.md" "$OUTDIR/demo-results.md" 2>/dev/null
rm -rf "$OUTDIR/demo-run"
echo "== done in $(( $(date +%s) - START )) s"
