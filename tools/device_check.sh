#!/usr/bin/env bash
# The GPU checks of the fused-kernel issue as ONE prepared run, for a session that is lent a device machine
# (15 minutes of device time in all, one command at most 10 minutes). It runs there in the repo root:
#
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl timm==1.0.31
#   device run:  command "bash tools/device_check.sh", carry [".whl"], timeout_s 580 (steps: at most 500 s)
#
# Steps (each with its own time limit, so one slow step cannot eat the rest): versions and zoo.ops.explain();
# the op tests on the GPU (tests/ops, Triton kernels compiled for real, no interpreter); the op benchmark in
# bf16, forward and forward+backward; the model benchmark (bf16, channels-last) for the tiny variants.
# At most 8 files come back from $OUT (the device tool's limit): env.txt, ops_tests.txt, bench_ops_fwd.json,
# bench_ops_fwdbwd.json, bench_ops.md, bench_models.json, bench_models.md, bench_models.png.
#
# DEVICE=cpu QUICK=1 OUT=out/device bash tools/device_check.sh   # dry run of the script itself, on a CPU
set -u
OUT=${OUT:-out/device}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then  # carried wheels (e.g. the pinned timm), installed beside the image's
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$QUICK" = 1 ]; then
    MODELS=maxvit_nano; BATCH="1"; REPEATS=1; TESTS="tests/ops/test_dense.py"
else
    MODELS=maxvit_tiny,biformer_tiny,crossformer_tiny,agent_swin_t,agent_pvt_t,nat_mini,dinat_mini
    BATCH="1 64"; REPEATS=10; TESTS="tests/ops"
fi
DTYPE=bfloat16; MDTYPE=bf16; CL=--channels-last
[ "$DEVICE" = cpu ] && { DTYPE=float32; MDTYPE=fp32; CL=; }

step() {  # step NAME SECONDS CMD...: run with a time limit, note how it ended in env.txt
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@"
    echo "step $name: exit $? after $((SECONDS - t0)) s (limit $limit s)" >> "$OUT/env.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
    $PY -c "import timm; print('timm', timm.__version__)" 2>&1 | tail -1
    $PY -c "import zoo.ops as o; print(o.explain())" 2>&1 | tail -20
} > "$OUT/env.txt" 2>&1

step ops_tests 180 $PY -m pytest -q -p no:cacheprovider $TESTS \
    > "$OUT/ops_tests.txt" 2>&1
step bench_ops_fwd 90 $PY tools/bench_ops.py --device "$DEVICE" --dtype $DTYPE --repeats $REPEATS \
    --out "$OUT/bench_ops_fwd.json" --md "$OUT/bench_ops.md" > /dev/null 2>> "$OUT/env.txt"
step bench_ops_fwdbwd 90 $PY tools/bench_ops.py --device "$DEVICE" --dtype $DTYPE --repeats $REPEATS --backward \
    --ops attention,routed_attention,agent_attention,neighborhood_attention2d \
    --out "$OUT/bench_ops_fwdbwd.json" --md "$OUT/bench_ops.md" > /dev/null 2>> "$OUT/env.txt"
# shellcheck disable=SC2086
step bench_models 140 $PY tools/bench_models.py --device "$DEVICE" --dtype $MDTYPE $CL --models "$MODELS" \
    --batch $BATCH --train --no-context --repeats $REPEATS --out "$OUT/bench_models.json" \
    --doc "$OUT/bench_models" > /dev/null 2>> "$OUT/env.txt"
tail -n 3 "$OUT/ops_tests.txt" >> "$OUT/env.txt"
cat "$OUT/env.txt"
