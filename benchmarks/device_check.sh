#!/usr/bin/env bash
# Every accelerator check of the [kernels] issue in one command that fits one call of the
# device tool (10 minutes; a lent task has 15 minutes of device time in all). From the
# repository root, on the lent GPU:
#
#   bash benchmarks/device_check.sh "$OUT"          # results and logs land in $OUT
#   bash benchmarks/device_check.sh DIR --smoke     # tiny sizes: checks the script (CPU, ~1 min)
#
# 1. tests/test_pallas_api.py, float32 values and gradients against the quadratic reference
#    through the public API: off CPU the kernels compile for the device instead of being
#    interpreted. Float32 matmuls at "highest" precision, as the 1e-4 bound assumes.
# 2. benchmarks/kernels.py: Pallas against the chunked form and cuDNN flash attention, every
#    Pallas row first checked against the chunked form's results; JSON rewritten per row.
# 3. benchmarks/decode_step.py: the XLA decoding step against the fused Pallas step, the
#    fused step's tokens first checked against the XLA step's.
# Each stage runs under its own time limit, so one stuck stage still leaves the others'
# results. Only jax, numpy and pytest are needed: the device image has them.
set -uo pipefail

usage="usage: bash benchmarks/device_check.sh OUT_DIR [--smoke]"
out=${1:?$usage}
smoke=${2:-}
if [[ -n $smoke && $smoke != --smoke ]]; then
    echo "$usage (got '$smoke')" >&2
    exit 2
fi
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if [[ -n $smoke ]]; then
    limits=(120 120 120)
    tests=(-k other_variants)
    kernel_args=(--tokens 16 --dims 8 --heads 2 --softmax_impl xla --repeats 1 --min_seconds 0)
    decode_args=(--widths 2 --rows 2 --batch 1 --heads 2 --dim 4 --min_seconds 0)
else
    limits=(150 300 100)
    tests=()
    kernel_args=(--repeats 5 --min_seconds 0.2)
    decode_args=(--widths 16 32 64 128 --batch 1 8 64 --heads 16 --min_seconds 0.2)
fi

failed=0
stage() {  # stage NAME LIMIT CMD...: runs CMD with a time limit, logs to $out/NAME.log
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name: $* (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc$([[ $rc == 124 ]] && echo ' (time limit)')"
    [[ $rc == 0 ]] || failed=1
}

{ date -u; nvidia-smi -L 2>/dev/null; "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
    | tee "$out/device.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest stage tests "${limits[0]}" \
    "$py" -m pytest -q -p no:cacheprovider tests/test_pallas_api.py "${tests[@]}"
stage kernels "${limits[1]}" "$py" benchmarks/kernels.py "${kernel_args[@]}" \
    --out "$out/kernels_$("$py" -c 'import jax; print(jax.default_backend())').json"
stage decode_step "${limits[2]}" "$py" benchmarks/decode_step.py --variants lasad \
    --impls xla pallas "${decode_args[@]}" --out "$out/decode_step.json"
exit $failed
