#!/usr/bin/env bash
# Cloud TPU VM / pod workflow for lasad_jax: create, setup, train, logs, delete.
# Run `launch/tpu/run.sh --help` for the usage; every subcommand takes --dry-run.
set -euo pipefail

readonly LOG_FILE='lasad_train.log'   # on each worker, relative to the remote home

usage() {
  cat <<'EOF'
Usage: launch/tpu/run.sh SUBCOMMAND --flag=value ... [--dry-run] [-- --config.FIELD=VALUE ...]

Cloud TPU VM (single host or pod slice) workflow for `python -m lasad_jax.main`.
Every subcommand wraps `gcloud compute tpus ...`; with --dry-run it prints the exact
commands, one per line, instead of running them.

Subcommands:
  create   Create the TPU VM (or, with --queued, a queued resource whose node is --name).
           Required: --name --zone --accelerator-type (e.g. v5litepod-64)
                     --version (TPU runtime, e.g. v2-alpha-tpuv5-lite)
           Optional: --queued  --spot
  setup    On ALL workers: get the repository into --dir and install it with
           `pip install -r requirements.txt -e . jax[tpu]`.
           Required: --name --zone --repo (git URL, or a local git checkout that is
                     packed with `git archive` and copied to every worker)
           Optional: --ref (default: main)
  train    On ALL workers, with LASAD_MULTIHOST=1 (the program then calls
           jax.distributed.initialize()): cd --dir and run
           `python -m lasad_jax.main --config=... --workdir=gs://...` plus any overrides
           after `--`. Output streams back and is also appended to ~/lasad_train.log.
           Required: --name --zone --config --workdir (gs://..., shared by all workers)
           Optional: --mode (train|sample|evaluate, default train; extract and
                     reference_stats run in one process: a single-host slice only)
                     --detach (run under nohup and return; follow with `logs`)
  logs     Follow ~/lasad_train.log on --worker (default 0; `all` for every worker).
           Required: --name --zone
  delete   Delete the TPU VM (or, with --queued, the queued resource and its node).
           Required: --name --zone      Optional: --queued

Flags for every subcommand:
  --project=ID    gcloud project (default: the gcloud config's project)
  --dir=PATH      repository directory on the workers (default: lasad_jax, under $HOME)
  --python=BIN    Python on the workers, 3.11 or newer (default: python3)
  --dry-run       print the commands instead of running them
  -h, --help      this text

Example (a v5e-64 pod, 16 workers):
  launch/tpu/run.sh create --name=lasad --zone=us-west4-a \
      --accelerator-type=v5litepod-64 --version=v2-alpha-tpuv5-lite --queued
  launch/tpu/run.sh setup  --name=lasad --zone=us-west4-a --repo=https://github.com/ORG/lasad_jax.git --ref=main
  launch/tpu/run.sh train  --name=lasad --zone=us-west4-a --config=configs/imagenet256.py \
      --workdir=gs://BUCKET/lasad_l -- --config.batch_size=1024
  launch/tpu/run.sh delete --name=lasad --zone=us-west4-a --queued
EOF
}

die() {
  echo "run.sh: error: $*" >&2
  echo "run.sh: see 'launch/tpu/run.sh --help'" >&2
  exit 2
}

# Quote one word for a POSIX shell, leaving plain words as they are (readable dry runs).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Quote every argument and join them with spaces.
join_quoted() {
  local out='' word
  for word in "$@"; do
    out+="${out:+ }$(quote "${word}")"
  done
  printf '%s' "${out}"
}

# Run a command, or with --dry-run print it (one line, copy-pasteable).
run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    join_quoted "$@"
    printf '\n'
  else
    "$@"
  fi
}

require() {
  local flag
  for flag in "$@"; do
    local var="${flag//-/_}"
    [[ -n "${!var}" ]] || die "missing required flag --${flag}=... for '${SUBCOMMAND}'"
  done
}

# ---------------------------------------------------------------- arguments
if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi
case "$1" in
  -h | --help) usage; exit 0 ;;
  create | setup | train | logs | delete) SUBCOMMAND="$1"; shift ;;
  *) die "unknown subcommand '$1' (expected create, setup, train, logs or delete)" ;;
esac

name='' zone='' project='' accelerator_type='' version='' repo='' ref='main'
config='' workdir='' mode='train' worker='0' dir='lasad_jax' python='python3'
queued=0 spot=0 detach=0 DRY_RUN=0
overrides=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator-type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --repo=*) repo="${1#*=}" ;;
    --ref=*) ref="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --mode=*) mode="${1#*=}" ;;
    --worker=*) worker="${1#*=}" ;;
    --dir=*) dir="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --detach) detach=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument '$1' (flags are --flag=value; overrides go after --)" ;;
  esac
  shift
done

require name zone
if [[ ${#overrides[@]} -gt 0 && "${SUBCOMMAND}" != train ]]; then
  die "overrides after -- are only for 'train'"
fi

gcloud_common=(--zone="${zone}")
[[ -n "${project}" ]] && gcloud_common+=(--project="${project}")

# gcloud compute tpus tpu-vm ssh NAME ... --worker=W --command REMOTE_COMMAND
ssh_workers() {
  local target="$1" remote="$2"
  run gcloud compute tpus tpu-vm ssh "${name}" "${gcloud_common[@]}" \
    --worker="${target}" --command "${remote}"
}

# ---------------------------------------------------------------- subcommands
cmd_create() {
  require accelerator-type version
  local extra=()
  [[ "${spot}" == 1 ]] && extra+=(--spot)
  if [[ "${queued}" == 1 ]]; then
    run gcloud compute tpus queued-resources create "${name}" "${gcloud_common[@]}" \
      --node-id="${name}" --accelerator-type="${accelerator_type}" \
      --runtime-version="${version}" ${extra[@]+"${extra[@]}"}
    # The node exists once the request is ACTIVE; `describe` shows the state.
    echo "run.sh: wait for state ACTIVE: gcloud compute tpus queued-resources describe ${name} --zone=${zone}" >&2
  else
    run gcloud compute tpus tpu-vm create "${name}" "${gcloud_common[@]}" \
      --accelerator-type="${accelerator_type}" --version="${version}" ${extra[@]+"${extra[@]}"}
  fi
}

cmd_setup() {
  require repo
  local qdir qpy check install
  qdir="$(quote "${dir}")"
  qpy="$(quote "${python}")"
  check="${qpy} -c 'import sys; assert sys.version_info >= (3, 11), \"lasad_jax needs Python 3.11+, found \" + sys.version'"
  install="${qpy} -m pip install -r requirements.txt -e . 'jax[tpu]'"
  if [[ -d "${repo}" ]]; then
    # A local checkout: pack REF with git archive and copy it to every worker.
    local archive="${TMPDIR:-/tmp}/${name}-lasad_jax.tar.gz"
    run git -C "${repo}" archive --format=tar.gz --output="${archive}" "${ref}"
    run gcloud compute tpus tpu-vm scp "${archive}" "${name}:lasad_jax.tar.gz" \
      "${gcloud_common[@]}" --worker=all
    ssh_workers all "set -e; ${check}; rm -rf ${qdir} && mkdir -p ${qdir} && tar -xzf lasad_jax.tar.gz -C ${qdir} && cd ${qdir} && ${install}"
  else
    local qrepo qref
    qrepo="$(quote "${repo}")"
    qref="$(quote "${ref}")"
    ssh_workers all "set -e; ${check}; if [ ! -d ${qdir}/.git ]; then git clone ${qrepo} ${qdir}; fi; cd ${qdir} && git fetch --all --tags && git checkout ${qref} && (git pull --ff-only || true) && ${install}"
  fi
}

cmd_train() {
  require config workdir
  [[ "${workdir}" == gs://* ]] ||
    die "--workdir must be a gs:// path that every worker can write (got '${workdir}')"
  case "${mode}" in
    train | sample | evaluate | extract | reference_stats) ;;
    *) die "--mode must be train, sample, evaluate, extract or reference_stats (got '${mode}')" ;;
  esac
  local main_cmd remote
  main_cmd="$(join_quoted "${python}" -m lasad_jax.main --config="${config}" \
    --workdir="${workdir}" --mode="${mode}" ${overrides[@]+"${overrides[@]}"})"
  remote="set -o pipefail; cd $(quote "${dir}") && export LASAD_MULTIHOST=1 && "
  if [[ "${detach}" == 1 ]]; then
    remote+="nohup ${main_cmd} >> ~/${LOG_FILE} 2>&1 < /dev/null &"
  else
    # The program writes its own log and the terminal follows the file until the program
    # ends, then the command exits with its status. Piping into `tee` instead lost the
    # log when the ssh session dropped: tee died, and the run went on writing nowhere.
    remote+="{ touch ~/${LOG_FILE}; from=\$(( \$(stat -c %s ~/${LOG_FILE}) + 1 )); "
    remote+="${main_cmd} >> ~/${LOG_FILE} 2>&1 < /dev/null & pid=\$!; "
    remote+="tail -c +\${from} --pid=\${pid} -f ~/${LOG_FILE}; wait \${pid}; }"
  fi
  ssh_workers all "${remote}"
}

cmd_logs() {
  ssh_workers "${worker}" "tail -n 200 -F ~/${LOG_FILE}"
}

cmd_delete() {
  if [[ "${queued}" == 1 ]]; then
    # --force also deletes the node that the queued resource created.
    run gcloud compute tpus queued-resources delete "${name}" "${gcloud_common[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "${name}" "${gcloud_common[@]}" --quiet
  fi
}

"cmd_${SUBCOMMAND}"
