#!/usr/bin/env bash
# Generate, and submit with sbatch, a multi-node SLURM job for lasad_jax.
# Run `launch/gpu/slurm.sh --help` for the usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu/slurm.sh --nodes=N --gpus-per-node=G --partition=P --time=T \
           --config=CONFIG --workdir=DIR [options] [--dry-run] [-- --config.FIELD=VALUE ...]

Writes a SLURM batch script that runs `python -m lasad_jax.main` as one task per node
(srun), each task using all G GPUs of its node, and submits it with sbatch. With
--dry-run it prints the same as shell commands instead (the `cat > FILE <<'EOF'` that
writes the script, then the sbatch command) and writes and submits nothing.

In the job every task gets LASAD_MULTIHOST=1, so the program calls
jax.distributed.initialize(). JAX reads the process count and rank from SLURM's
environment (SLURM_NTASKS, SLURM_PROCID, ...) by itself; the script also exports
JAX_COORDINATOR_ADDRESS=<first node of $SLURM_JOB_NODELIST>:<port>, which
jax.distributed.initialize() uses as the coordinator, and JAX_LOCAL_DEVICE_IDS=0,...,G-1
(without it JAX takes SLURM_LOCALID, 0 for every task, as the index of the task's one GPU).

The job installs nothing. Prepare, on a filesystem every node sees, a Python 3.11+
environment with `pip install -r requirements.txt -e . "jax[cuda13]"` in this repository,
and activate it with --setup (or in the shell you submit from: sbatch passes the
environment on).

Required:
  --nodes=N              number of nodes (one JAX process each)
  --gpus-per-node=G      GPUs per node
  --partition=P          SLURM partition
  --time=T               time limit, e.g. 48:00:00 or 2-00:00:00
  --config=CONFIG        e.g. configs/imagenet256.py (relative to the repository)
  --workdir=DIR          checkpoints and metrics; a path every node can write
Optional:
  --job-name=NAME        default: lasad
  --account=A            SLURM account
  --cpus-per-task=C      CPUs per node task (data loading)
  --mode=M               train (default), sample, evaluate; extract or reference_stats
                         (these run in one process: --nodes=1 --gpus-per-node=1)
  --setup=CMD            shell line run before training, e.g. 'source /shared/venv/bin/activate'
  --python=BIN           default: python
  --port=PORT            coordinator port (default: JAX's choice, 61440 + job id mod 4096)
  --repo-dir=DIR         repository on the shared filesystem (default: this checkout)
  --script=FILE          where the batch script is written (default: $TMPDIR/NAME.sbatch)
  --dry-run              print instead of writing and submitting
  -h, --help             this text

Example (2 nodes x 8 GPUs):
  launch/gpu/slurm.sh --nodes=2 --gpus-per-node=8 --partition=gpu --time=48:00:00 \
      --config=configs/imagenet256.py --workdir=/shared/ckpt/lasad_l \
      --setup='source /shared/venvs/lasad/bin/activate' -- --config.batch_size=256
EOF
}

die() {
  echo "slurm.sh: error: $*" >&2
  echo "slurm.sh: see 'launch/gpu/slurm.sh --help'" >&2
  exit 2
}

# Quote one word for a POSIX shell, leaving plain words as they are (readable output).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

join_quoted() {
  local out='' word
  for word in "$@"; do
    out+="${out:+ }$(quote "${word}")"
  done
  printf '%s' "${out}"
}

# ---------------------------------------------------------------- arguments
nodes='' gpus_per_node='' partition='' time_limit='' config='' workdir=''
job_name='lasad' account='' cpus_per_task='' mode='train' setup='' python='python'
port='' script='' dry_run=0
repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
overrides=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus-per-node=*) gpus_per_node="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --job-name=*) job_name="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --cpus-per-task=*) cpus_per_task="${1#*=}" ;;
    --mode=*) mode="${1#*=}" ;;
    --setup=*) setup="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --repo-dir=*) repo_dir="${1#*=}" ;;
    --script=*) script="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument '$1' (flags are --flag=value; overrides go after --)" ;;
  esac
  shift
done

for pair in nodes:nodes gpus-per-node:gpus_per_node partition:partition time:time_limit \
  config:config workdir:workdir; do
  var="${pair#*:}"
  [[ -n "${!var}" ]] || die "missing required flag --${pair%%:*}=..."
done
[[ "${nodes}" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer (got '${nodes}')"
[[ "${gpus_per_node}" =~ ^[1-9][0-9]*$ ]] ||
  die "--gpus-per-node must be a positive integer (got '${gpus_per_node}')"
[[ -z "${port}" || "${port}" =~ ^[0-9]+$ ]] || die "--port must be a number (got '${port}')"
case "${mode}" in
  train | sample | evaluate | extract | reference_stats) ;;
  *) die "--mode must be train, sample, evaluate, extract or reference_stats (got '${mode}')" ;;
esac
[[ -n "${script}" ]] || script="${TMPDIR:-/tmp}/${job_name}.sbatch"

# ---------------------------------------------------------------- the batch script
main_cmd="$(join_quoted "${python}" -m lasad_jax.main --config="${config}" \
  --workdir="${workdir}" --mode="${mode}" ${overrides[@]+"${overrides[@]}"})"

generate() {
  echo '#!/usr/bin/env bash'
  echo "#SBATCH --job-name=$(quote "${job_name}")"
  echo "#SBATCH --nodes=${nodes}"
  echo '#SBATCH --ntasks-per-node=1'
  echo "#SBATCH --gpus-per-node=${gpus_per_node}"
  [[ -z "${cpus_per_task}" ]] || echo "#SBATCH --cpus-per-task=${cpus_per_task}"
  echo "#SBATCH --partition=$(quote "${partition}")"
  [[ -z "${account}" ]] || echo "#SBATCH --account=$(quote "${account}")"
  echo "#SBATCH --time=${time_limit}"
  echo "#SBATCH --output=$(quote "${job_name}")-%j.out"
  echo '# Generated by launch/gpu/slurm.sh. Installs nothing: the Python environment'
  echo '# (pip install -r requirements.txt -e . "jax[cuda13]") must already be on every node.'
  echo 'set -euo pipefail'
  echo "cd $(quote "${repo_dir}")"
  [[ -z "${setup}" ]] || echo "${setup}"
  cat <<'EOS'
# The program calls jax.distributed.initialize() when LASAD_MULTIHOST=1. JAX takes the
# process count and rank from SLURM (SLURM_NTASKS, SLURM_PROCID) and the coordinator
# from JAX_COORDINATOR_ADDRESS: the first node of the allocation.
export LASAD_MULTIHOST=1
EOS
  echo '# One task per node: each uses every GPU of its node (JAX would take SLURM_LOCALID,'
  echo '# 0 here, as its one GPU).'
  echo "export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus_per_node - 1)))"
  if [[ -n "${port}" ]]; then
    echo "coordinator_port=${port}"
  else
    echo "coordinator_port=\$(( SLURM_JOB_ID % 4096 + 61440 ))"
  fi
  cat <<'EOS'
# sed reads all of scontrol's output (head would close the pipe early, and under
# pipefail the SIGPIPE that scontrol may get fails the job).
coordinator_host="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | sed -n 1p)"
export JAX_COORDINATOR_ADDRESS="${coordinator_host}:${coordinator_port}"
echo "nodes: ${SLURM_JOB_NODELIST}; coordinator: ${JAX_COORDINATOR_ADDRESS}"
EOS
  # srun does not inherit --cpus-per-task from the allocation (Slurm >= 22.05): repeated
  # here, or each process would get one core for its data loading.
  local cpus=""
  [[ -z "${cpus_per_task}" ]] || cpus=" --cpus-per-task=${cpus_per_task}"
  echo "srun --nodes=${nodes} --ntasks-per-node=1 --gpus-per-node=${gpus_per_node}${cpus} --kill-on-bad-exit=1 \\"
  echo "  ${main_cmd}"
}

if [[ "${dry_run}" == 1 ]]; then
  echo "cat > $(quote "${script}") <<'EOF'"
  generate
  echo 'EOF'
  echo "sbatch $(quote "${script}")"
else
  command -v sbatch >/dev/null || die "sbatch not found: run this on a SLURM login node (or use --dry-run)"
  generate > "${script}"
  echo "slurm.sh: wrote ${script}" >&2
  sbatch "${script}"
fi
