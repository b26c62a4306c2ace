#!/usr/bin/env bash
# Every accelerator check of the [kernels] issue in one command that fits one call of the
# device tool (10 minutes; a lent task has 15 minutes of device time in all, and starting
# the machine took from 30 s to 5 min on 2026-12-04). From the repository root, on the GPU:
#
#   bash benchmarks/device_check.sh "$OUT"          # results and logs land in $OUT
#   bash benchmarks/device_check.sh DIR --smoke     # tiny sizes: checks the script (CPU, ~1 min)
#
# Stages, each a process under its own time limit (at most 90 + 45 + 60 + 200 + 150 s), so
# one slow compile cannot take the others' results with it; every JSON is rewritten per row:
# 1. tests/ops/test_pallas_api.py, float32 values and gradients against the quadratic reference
#    through the public API, the kernels compiled for the device (45 s on an H200).
# 2. benchmarks/kernels.py --ops softmax: cuDNN flash attention, the baseline (12 s).
# 3. benchmarks/masked_probe.py: the masked kernel's tile sizes and matmul precisions.
# 4. benchmarks/kernels.py, the LASAD operators (chunked XLA, Pallas), every Pallas row first
#    checked against the chunked form; stage 2's rows join its table and speedups.
# 5. benchmarks/sampling.py --hlo_check: images/s of `generate` for LASADGen-L and -B, lasad
#    against softmax (bf16, batch 64, CFG 2.0), per-token time by quarter, state and KV-cache
#    bytes, compile time; each compiled sampler is first checked for copies of its decoding
#    cache (lasad_jax.sampling.hlo_check; XLA's GPU pipeline inserts copies the CPU one does
#    not). Rows run in order of importance (L 256 px, B 256 px, L 512 px, ...): the limit
#    cuts the last ones; `python benchmarks/sampling.py --hlo_check` alone takes the table.
# Files back: device.txt, log.txt (every stage) and four JSON, within the tool's 8.
# Only jax, flax, numpy and pytest are needed: the device image has them.
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
    limits=(120 120 120 120)
    tests=(-k other_variants)
    sizes=(--tokens 16 --dims 8 --heads 2 --softmax_impl xla --repeats 1 --min_seconds 0)
    probe_args=(--tokens 16 --dim 8 --heads 2 --blocks 16 --min_seconds 0)
else
    limits=(90 45 60 200)
    tests=()
    sizes=(--repeats 5 --min_seconds 0.2)
    probe_args=(--tokens 256 1024 --blocks 32 64 128)
fi

failed=0
stage() {  # stage NAME LIMIT CMD...: runs CMD with a time limit, appends to $out/log.txt
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name: $* (limit ${limit}s, $(date -u +%T))" | tee -a "$out/log.txt"
    timeout "$limit" "$@" 2>&1 | grep --line-buffered -v -e "DeprecationWarning: The Pallas Triton" \
        -e "return rule(ctx" | tee -a "$out/log.txt"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc$([[ $rc == 124 ]] && echo ' (time limit)')" | tee -a "$out/log.txt"
    [[ $rc == 0 ]] || failed=1
}

backend=$("$py" -c 'import jax; print(jax.default_backend(), jax.__version__, jax.devices())')
{ date -u; nvidia-smi -L 2>/dev/null; echo "jax backend, version, devices: $backend"; } \
    | tee "$out/device.txt"
backend=${backend%% *}
JAX_DEFAULT_MATMUL_PRECISION=highest stage tests "${limits[0]}" \
    "$py" -m pytest -q -p no:cacheprovider tests/ops/test_pallas_api.py "${tests[@]}"
stage softmax "${limits[1]}" "$py" benchmarks/kernels.py --ops softmax "${sizes[@]}" \
    --out "$out/softmax_$backend.json"
stage masked_probe "${limits[2]}" "$py" benchmarks/masked_probe.py "${probe_args[@]}" \
    --out "$out/masked_probe_$backend.json"
stage kernels "${limits[3]}" "$py" benchmarks/kernels.py --ops lasad_chunked lasad_pallas \
    "${sizes[@]}" --baseline "$out/softmax_$backend.json" --out "$out/kernels_$backend.json"
if [[ -n $smoke ]]; then sampling_args=(--smoke); else sampling_args=(--repeats 2); fi
stage sampling 150 "$py" benchmarks/sampling.py --hlo_check "${sampling_args[@]}" \
    --out "$out/sampling_$backend.json"
exit $failed
