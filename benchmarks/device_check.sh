#!/usr/bin/env bash
# Every accelerator check, in two calls of the device tool (10 minutes each at most; a
# lent task has 15 minutes of device time in all, and starting the machine took from 30 s
# to 5 min on 2026-12-04). The first call (under 10 min) fits after any start; the second
# (about 3 min) only after a start of about 2 min or less, issued at once (a warm machine
# is given back after 30 s idle; a fresh start needs 4 min of budget): check the device
# tool's `status` (budget_left_s) first. Each call's $OUT starts empty, so the report that
# combines both is `python benchmarks/report.py CALL1_FILES CALL2_FILES`, run here
# afterwards on the two folders of files that came back. From the repository root, on
# the GPU:
#
#   bash benchmarks/device_check.sh "$OUT"          # first call: what decides the code
#   bash benchmarks/device_check.sh "$OUT" --stages pallas_tests,chunk_sweep,rest  # second
#   bash benchmarks/device_check.sh DIR --smoke     # every stage at tiny sizes (CPU)
#
# Without --stages the first call runs the stages that set the library's choices and
# measure the issues' targets (core, train_step, pallas, tiles, sampling: 560 s, then the
# report: 20 s at most); the others (165 s) wait for a second call, or are named with
# --stages after a change, to re-measure only what it touched. Without the core stage,
# the pallas stage times cuDNN itself. Limits were set from compile times for an H200
# measured without one (benchmarks/gpu_aot.py, 2-core CPU; 2026-12-05): LASADGen-L's
# training step compiles in 19 to 88 s a row, a sampler in 5 to 19 s.
#
# Stages, each a process under its own time limit, so one slow compile cannot take the
# others' results with it; every JSON is rewritten per row, and each row is printed as it
# goes. First call:
# 1. core (80 s): benchmarks/kernels.py, the chunked XLA form against cuDNN flash
#    attention, D = 64, batch 1, T = 256 ... 16384, forward+backward then forward, every
#    LASAD row first checked against the float32 reference: the targets.
# 2. train_step (180 s): benchmarks/train_step.py, one jitted step of LASADGen-L, 256 px
#    batch 64 then 512 px batch 16, at each softmax, LASAD with impl="pallas", LASAD with
#    impl="auto".
# 3. pallas (60 s): kernels.py, impl="pallas" rows (D = 64, batch 1), checked first; stage
#    1's softmax rows join its speedups (any length stage 1's limit left without one is
#    timed here). Chunks of 1024, 2048 and 4096 tokens (the kernels
#    write no C x C scores, so longer chunks than the XLA form's may pay: fewer states);
#    T = 4096 and 16384 first, where chunks differ and the targets are widest.
# 4. tiles (30 s): benchmarks/masked_probe.py, the intra-chunk kernel's tiles, warps and
#    pipeline stages, forward+backward at the training shapes of stage 2 (256 and 1024
#    tokens), each checked first (output and five gradients), setting by setting with both shapes inside (a limit
#    leaves whole settings): the data for ops.pallas.masked.default_tiles.
# 5. sampling (210 s): benchmarks/sampling.py --hlo_check, images/s of `generate` for
#    LASADGen-L and -B (bf16, batch 64, CFG 2.0), per-token time by quarter (once per
#    size), state and KV-cache bytes, compile time; each compiled sampler is first checked
#    for copies of its decoding cache (lasad_jax.sampling.hlo_check: XLA's GPU pipeline
#    inserts copies the CPU one does not). Sizes in order of importance (L 256 px, B 256
#    px, L 512 px, ...), at each softmax, then LASAD with its fused Pallas step
#    (model.decode_impl="pallas", under half the XLA step's bytes per token as compiled
#    for an H200 by benchmarks/gpu_aot.py; timed only after it matches the XLA step on
#    random inputs at the model's head sizes, since the zero-initialised output head would
#    hide a wrong kernel), then its XLA step; a row that fails is recorded and the stage
#    goes on; then both LASAD steps with
#    bfloat16 column states (model.decode_state_dtype). The limit cuts the last rows
#    (384 px, bf16 states): name the stage in a later call for them.
# Where the time goes, in the same call: once a stage has timed and saved its rows (so a
# limit cuts profiles, not rows), the rows that a missed target's note would need run
# once more under JAX's profiler (kernels.py --profile_tokens: LASAD forward+backward at
# T = 16384 in stage 1, 4096 and 16384 in stage 3; train_step.py --profile: every row,
# after both sizes; sampling.py --profile_grids 16: the 256 px rows, where launches may
# cost as much as bytes, as soon as the loop leaves 256 px, since the stage's limit falls
# among its last rows). Each row keeps the device's busy time
# against the call's wall time and its heaviest kernels with their bytes and source
# (benchmarks/device_profile.py); the report prints them. A second visit to the device
# only to profile would not fit a lent session's 15 minutes.
# Second call:
# 6. pallas_tests (50 s): tests/ops/test_pallas_api.py, the Pallas kernels compiled for the
#    device, float32 values and five gradients against the quadratic reference; and the
#    fused decoding step's kernel against it (tests/ops/test_pallas_decode.py, head sizes).
#    (The timed stages check every row's values themselves.)
# 7. chunk_sweep (90 s): kernels.py, chunk size x remat policy of the XLA form,
#    forward+backward at T = 16384 then 4096 (the data for ops.chunked's defaults on GPU);
#    then the Pallas split with float32 column states at stage 3's chunks of 1024 and 2048
#    tokens, against its rows with the default bf16 states (ops.pallas.chunked
#    .state_storage; the report must read both calls' folders for this, below).
# 8. rest (25 s): kernels.py, batch 8 and D = 128, chunked form and cuDNN.
# Then benchmarks/report.py (20 s at most, on the CPU) prints into the log each target of
# issues 17 and 18, met or missed, and the defaults the rows support.
# Files back: log.txt (the device, every stage, the report) and one JSON per stage but
# pallas_tests: seven, the tool's limit being eight.
# Only jax, numpy, optax, flax and pytest are needed: the device image has them.
set -uo pipefail

all_stages=(core train_step pallas_tests pallas tiles chunk_sweep rest sampling)
first_call=core,train_step,pallas,tiles,sampling
report_limit=20
usage="usage: bash benchmarks/device_check.sh OUT_DIR [--smoke] [--stages NAME,...]"
out=${1:?$usage}
shift
smoke=
only=
while [[ $# -gt 0 ]]; do
    case $1 in
        --smoke) smoke=--smoke ;;
        --stages)
            only=${2:-}
            shift
            for name in ${only//,/ }; do
                if [[ " ${all_stages[*]} " != *" $name "* ]]; then
                    echo "--stages: unknown stage '$name'; valid: ${all_stages[*]}" >&2
                    exit 2
                fi
            done
            if [[ -z $only ]]; then
                echo "--stages takes a comma-separated list of: ${all_stages[*]}" >&2
                exit 2
            fi
            ;;
        *) echo "$usage (got '$1')" >&2; exit 2 ;;
    esac
    shift
done
# Without --stages: the first call's stages on a device, every stage with --smoke.
if [[ -z $only && -z $smoke ]]; then only=$first_call; fi
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# JAX's allocator takes 75% of the GPU's memory by default: 60 GB of an 80 GB H100, less
# than LASADGen-L's training step at 512 px needs with the XLA form (benchmarks/gpu_aot.py
# --target benchmarks/gpu_targets/h100.txtpb checks every program against this share).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

# What each stage measures; the sizes follow (tiny with --smoke).
core=(--ops lasad_chunked softmax --modes fwd_bwd fwd)
pallas=(--modes fwd_bwd fwd)
sweep=(--ops lasad_chunked lasad_pallas --state_dtypes float32 --modes fwd_bwd
       --remats inputs none)
rest=(--ops lasad_chunked softmax --modes fwd_bwd)
if [[ -n $smoke ]]; then
    limits=(240 240 120 240 120 240 240 120)
    tests=(-k "other_variants or auto_does_not")
    core+=(--smoke --check_tokens 16 --profile_tokens 64)  # T = 64: the long-sequence check
    pallas+=(--smoke --profile_tokens 64)
    sweep+=(--smoke --tokens 64 --chunk_sizes 16 32)
    rest+=(--smoke --shapes 2:16 --tokens 16)
    train=(--smoke --pallas --profile)
    tiles=(--smoke)
    sampling_args=(--smoke --decode_impls xla pallas --profile_grids 4)
else
    limits=(80 180 50 60 30 90 25 210)
    # Interpreter-only checks of shapes, long on a device and no test of its compiler.
    tests=(-k "not decays_of_one_over_16k and not read_the_sequence_in_place")
    timing=(--repeats 5 --min_seconds 0.2)
    core+=(--batch 1 --dims 64 --profile_tokens 16384 "${timing[@]}")
    pallas+=(--batch 1 --dims 64 --tokens 4096 16384 256 1024 --chunk_sizes 1024 2048 4096
             --profile_tokens 4096 16384 "${timing[@]}")
    # The Pallas float32-state rows at the chunks the pallas stage times its default
    # (bf16) states at, so that each has a twin (ops.pallas.chunked.state_storage).
    sweep+=(--batch 1 --dims 64 --tokens 16384 4096 --chunk_sizes 512 1024 2048
            --pallas_chunk_sizes 1024 2048 "${timing[@]}")
    rest+=(--shapes 8:64 1:128 8:128 --tokens 1024 4096 16384 "${timing[@]}")
    train=(--steps 5 --min_seconds 1 --pallas --profile)
    tiles=()
    sampling_args=(--repeats 3 --quarter_repeats 1 --state_dtypes float32 bfloat16
                   --decode_impls pallas xla --profile_grids 16)
fi

failed=0
stage() {  # stage NAME LIMIT CMD...: runs CMD with a time limit, appends to $out/log.txt
    local name=$1 limit=$2 rc
    shift 2
    if [[ -n $only && ",$only," != *",$name,"* ]]; then
        echo "== $name: skipped (this call runs $only)" | tee -a "$out/log.txt"
        return
    fi
    echo "== $name: $* (limit ${limit}s, $(date -u +%T))" | tee -a "$out/log.txt"
    # -k: a process that ignores the TERM (stuck in the driver) is killed 5 s later.
    timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v -e "DeprecationWarning: The Pallas Triton" \
        -e "return rule(ctx" | tee -a "$out/log.txt"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)')" \
        | tee -a "$out/log.txt"
    [[ $rc == 0 ]] || failed=1
}

backend=$("$py" -c 'import jax; print(jax.default_backend(), jax.__version__, jax.devices())')
{ date -u; nvidia-smi -L 2>/dev/null; echo "jax backend, version, devices: $backend"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"; } \
    | tee "$out/log.txt"
backend=${backend%% *}
kernels=("$py" benchmarks/kernels.py)
stage core "${limits[0]}" "${kernels[@]}" "${core[@]}" --out "$out/kernels_core_$backend.json"
stage train_step "${limits[1]}" "$py" benchmarks/train_step.py "${train[@]}" \
    --out "$out/train_step_$backend.json"
# One process (`-o addopts=` drops pyproject's `-n auto`): the device has no pytest-xdist.
# -v: each test's verdict is in the log as it ends, so a stage cut by its limit still
# shows which passed and which was running.
JAX_DEFAULT_MATMUL_PRECISION=highest stage pallas_tests "${limits[2]}" \
    "$py" -m pytest -v -o addopts= -p no:cacheprovider tests/ops/test_pallas_api.py \
    tests/ops/test_pallas_decode.py::test_pallas_step_at_kernel_head_sizes "${tests[@]}"
if [[ -f $out/kernels_core_$backend.json ]]; then  # the core stage's cuDNN rows
    pallas_ops=(--ops lasad_pallas --baseline "$out/kernels_core_$backend.json")
else  # no core stage in this call: cuDNN is timed here
    pallas_ops=(--ops lasad_pallas softmax)
fi
stage pallas "${limits[3]}" "${kernels[@]}" "${pallas_ops[@]}" "${pallas[@]}" \
    --out "$out/kernels_pallas_$backend.json"
stage tiles "${limits[4]}" "$py" benchmarks/masked_probe.py "${tiles[@]}" \
    --out "$out/kernels_tiles_$backend.json"
stage chunk_sweep "${limits[5]}" "${kernels[@]}" "${sweep[@]}" \
    --out "$out/kernels_sweep_$backend.json"
stage rest "${limits[6]}" "${kernels[@]}" "${rest[@]}" --out "$out/kernels_rest_$backend.json"
stage sampling "${limits[7]}" "$py" benchmarks/sampling.py --hlo_check "${sampling_args[@]}" \
    --out "$out/sampling_$backend.json"
# Last, on the CPU (seconds): each issue target met or missed and the defaults the rows
# support, from whatever JSON this call left (benchmarks/report.py).
if compgen -G "$out/*.json" >/dev/null; then
    echo "== report ($(date -u +%T))" | tee -a "$out/log.txt"
    JAX_PLATFORMS=cpu timeout -k 5 "$report_limit" "$py" benchmarks/report.py "$out" 2>&1 \
        | tee -a "$out/log.txt"
    [[ ${PIPESTATUS[0]} == 0 ]] || failed=1
fi
exit $failed
