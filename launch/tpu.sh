#!/usr/bin/env bash
# Runs jaxstep on a Cloud TPU VM or pod slice: create (or reuse) the TPU, copy this
# checkout to every worker, install it with the [tpu] extra into a Python 3.11+ venv
# (made with uv: the TPU images ship Python 3.10), optionally stage the data, and start
# `python -m jaxstep.main` from that venv on all workers at once (one JAX process per
# worker).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh --zone ZONE --config CONFIG [options] [-- MAIN_ARGS...]

Creates the TPU VM when `gcloud compute tpus tpu-vm describe` cannot find it (a
PREEMPTED/TERMINATED Spot VM is deleted and created again, a STOPPED one started),
copies the code (this checkout, without .git/runs/venvs) to all workers and installs
it there. jaxstep needs Python >= 3.11 and the TPU images (tpu-ubuntu2204-base,
v2-alpha-tpuv5*, v2-alpha-tpuv6e) have Ubuntu 22.04's Python 3.10, so each worker runs
  python3 -m pip install --user uv
  python3 -m uv venv --seed --python PY_VERSION REMOTE_DIR/.venv  (uv downloads a
      managed CPython; skipped when the venv already has PY_VERSION)
  REMOTE_DIR/.venv/bin/python -m pip install -e '.[tpu]'
With --data, the data folder (laid out as gsm8k/, math/) is staged on every worker in
REMOTE_DATA: a gs:// source with `gcloud storage rsync --recursive` run on each
worker, a local folder packed and copied with `gcloud compute tpus tpu-vm scp
--worker=all`. Then on all workers:
  cd REMOTE_DIR && export JAXSTEP_DISTRIBUTED=1 && .venv/bin/python -m jaxstep.main \
      --config=CONFIG --workdir=WORKDIR [--config.data.data_dir=REMOTE_DATA] MAIN_ARGS
(JAXSTEP_DISTRIBUTED=1 makes jaxstep call jax.distributed.initialize(), which finds
the pod's workers by itself.)

Options:
  --name NAME              TPU VM name (default: jaxstep-$USER)
  --zone ZONE              zone, e.g. us-central2-b (required)
  --project PROJECT        GCP project (default: gcloud's configured project)
  --accelerator-type TYPE  e.g. v4-8, v4-32, v5litepod-16 (default: v4-8)
  --version VERSION        TPU runtime version (default: tpu-ubuntu2204-base)
  --spot                   create a Spot VM
  --preemptible            create a preemptible VM (older TPU generations)
  --config CONFIG          config file, optionally with a preset: configs/ppo_prm_max.py:paper
                           (relative to the repository root; required)
  --workdir DIR            run folder on the workers; on a multi-host pod use a gs://
                           bucket so that every worker sees the same checkpoints
                           (default: runs/NAME)
  --extra-args "ARGS"      extra words for jaxstep.main, inserted as written
                           (e.g. "--config.ppo.kl_coef=0.05"); words after `--` are
                           passed quoted, one argument each
  --remote-dir DIR         code folder on the workers, relative to home (default: jaxstep);
                           the venv is REMOTE_DIR/.venv
  --python-version VER     Python for the workers' venv, MAJOR.MINOR >= 3.11 (default: 3.11)
  --data SRC               data folder to stage on every worker and pass to jaxstep as
                           --config.data.data_dir: gs://bucket/path (rsynced by each
                           worker; the VM's service account must be able to read it)
                           or a local folder (copied with scp); either holds gsm8k/, math/
  --remote-data DIR        where the data goes on the workers, relative to home unless
                           absolute (default: jaxstep-data)
  --skip-create            never create: fail if the TPU does not exist
  --skip-install           do not copy or install the code (already there, venv included)
  --detach                 start the run with nohup and return; output goes to
                           REMOTE_DIR/NAME.log on each worker
  --dry-run                print the commands instead of running them
  -h, --help               show this help
EOF
}

NAME="jaxstep-${USER:-user}"
ZONE=""
PROJECT=""
ACCELERATOR_TYPE="v4-8"
VERSION="tpu-ubuntu2204-base"
SPOT=0
PREEMPTIBLE=0
CONFIG=""
WORKDIR=""
EXTRA_ARGS=""
REMOTE_DIR="jaxstep"
PY_VERSION="3.11"
DATA=""
REMOTE_DATA="jaxstep-data"
SKIP_CREATE=0
SKIP_INSTALL=0
DETACH=0
DRY_RUN=0
MAIN_ARGS=()

die() { echo "launch/tpu.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see -h)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator-type) need_value "$@"; ACCELERATOR_TYPE="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --extra-args) need_value "$@"; EXTRA_ARGS="$2"; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --python-version) need_value "$@"; PY_VERSION="$2"; shift 2 ;;
    --data) need_value "$@"; DATA="$2"; shift 2 ;;
    --remote-data) need_value "$@"; REMOTE_DATA="$2"; shift 2 ;;
    --skip-create) SKIP_CREATE=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # --flag=value -> --flag value
    *) die "unknown argument '$1' (see -h)" ;;
  esac
done

[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$CONFIG" ]] || die "--config is required"
[[ $SPOT -eq 1 && $PREEMPTIBLE -eq 1 ]] && die "--spot and --preemptible are exclusive"
[[ -n "$WORKDIR" ]] || WORKDIR="runs/${NAME}"
[[ "$PY_VERSION" =~ ^3\.([0-9]+)$ ]] && (( BASH_REMATCH[1] >= 11 )) ||
  die "--python-version must be MAJOR.MINOR, 3.11 or newer (setup.py: python_requires>=3.11), got '$PY_VERSION'"
DATA_IS_GCS=0
if [[ -n "$DATA" ]]; then
  if [[ "$DATA" == gs://* ]]; then
    DATA_IS_GCS=1
  elif [[ "$DATA" == *://* ]]; then
    die "--data must be gs://bucket/path or a local folder, got '$DATA'"
  else
    [[ -d "$DATA" ]] || die "--data folder $DATA not found"
    DATA="$(cd "$DATA" && pwd)"
  fi
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$REPO_ROOT/setup.py" ]] || die "$REPO_ROOT/setup.py not found: run from a jaxstep checkout"
CONFIG_FILE="${CONFIG%%:*}"
[[ -f "$REPO_ROOT/$CONFIG_FILE" ]] || die "config file $CONFIG_FILE not found under $REPO_ROOT"

LOCATION=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOCATION+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# Shell-quotes words for display or for a remote command line: plain words as they
# are, others in single quotes.
quote_words() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# Prints a command in dry-run mode, runs it otherwise.
run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    quote_words "$@"
  else
    "$@"
  fi
}

create_cmd=("${TPU[@]}" create "$NAME" "${LOCATION[@]}"
            --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
[[ $SPOT -eq 1 ]] && create_cmd+=(--spot)
[[ $PREEMPTIBLE -eq 1 ]] && create_cmd+=(--preemptible)

# 1. Create or reuse the TPU.
describe_cmd=("${TPU[@]}" describe "$NAME" "${LOCATION[@]}" --format=value\(state\))
if [[ $DRY_RUN -eq 1 ]]; then
  run "${describe_cmd[@]}"
  [[ $SKIP_CREATE -eq 1 ]] || { echo "# if describe fails:"; run "${create_cmd[@]}"; }
else
  if state="$("${describe_cmd[@]}" 2>/dev/null)"; then
    echo "launch/tpu.sh: reusing TPU $NAME (state: ${state:-unknown})" >&2
    case "$state" in
      PREEMPTED|TERMINATED)
        echo "launch/tpu.sh: $NAME is $state; deleting and creating it again" >&2
        run "${TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet
        run "${create_cmd[@]}" ;;
      STOPPED|STOPPING)
        run "${TPU[@]}" start "$NAME" "${LOCATION[@]}" ;;
    esac
  else
    [[ $SKIP_CREATE -eq 0 ]] || die "TPU $NAME not found in $ZONE and --skip-create was given"
    echo "launch/tpu.sh: creating TPU $NAME ($ACCELERATOR_TYPE, $VERSION)" >&2
    run "${create_cmd[@]}"
  fi
fi

# 2. Copy and install the code on every worker.
if [[ $SKIP_INSTALL -eq 0 ]]; then
  STAGING="$(mktemp -d)"
  trap 'rm -rf "$STAGING"' EXIT
  TARBALL="$STAGING/jaxstep.tar.gz"
  run tar -czf "$TARBALL" --exclude=.git --exclude=runs --exclude=.venv --exclude=venv \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache -C "$REPO_ROOT" .
  run "${TPU[@]}" scp "$TARBALL" "$NAME:jaxstep.tar.gz" "${LOCATION[@]}" --worker=all
  install="set -e; mkdir -p $(quote_words "$REMOTE_DIR"); tar -xzf jaxstep.tar.gz -C $(quote_words "$REMOTE_DIR")"
  install+="; cd $(quote_words "$REMOTE_DIR")"
  # A Python >= 3.11 venv: the image's python3 is 3.10, so uv fetches a managed CPython.
  install+="; python3 -m pip install --user -q --upgrade uv"
  install+="; .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (${PY_VERSION/./, }))' 2>/dev/null"
  install+=" || python3 -m uv venv --clear --seed --python $PY_VERSION .venv"
  install+="; .venv/bin/python -m pip install -q --upgrade pip"
  install+="; .venv/bin/python -m pip install -q -e '.[tpu]'"
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$install"
fi

# 3. Stage the data on every worker.
if [[ "$REMOTE_DATA" == /* ]]; then
  remote_data="$(quote_words "$REMOTE_DATA")"
else
  remote_data="\"\$HOME\"/$(quote_words "$REMOTE_DATA")"  # expanded by the worker's shell
fi
if [[ $DATA_IS_GCS -eq 1 ]]; then
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="set -e; mkdir -p $remote_data; gcloud storage rsync --recursive $(quote_words "$DATA") $remote_data"
elif [[ -n "$DATA" ]]; then
  DATA_STAGING="$(mktemp -d)"
  trap 'rm -rf "${STAGING:-}" "$DATA_STAGING"' EXIT
  DATA_TARBALL="$DATA_STAGING/jaxstep-data.tar.gz"
  run tar -czf "$DATA_TARBALL" -C "$DATA" .
  run "${TPU[@]}" scp "$DATA_TARBALL" "$NAME:jaxstep-data.tar.gz" "${LOCATION[@]}" --worker=all
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="set -e; mkdir -p $remote_data; tar -xzf jaxstep-data.tar.gz -C $remote_data; rm -f jaxstep-data.tar.gz"
fi

# 4. Run jaxstep.main on all workers, from the venv.
main=".venv/bin/python -m jaxstep.main $(quote_words --config="$CONFIG" --workdir="$WORKDIR")"
[[ -n "$DATA" ]] && main+=" --config.data.data_dir=$remote_data"
[[ -n "$EXTRA_ARGS" ]] && main+=" $EXTRA_ARGS"
[[ ${#MAIN_ARGS[@]} -gt 0 ]] && main+=" $(quote_words "${MAIN_ARGS[@]}")"
if [[ $DETACH -eq 1 ]]; then
  main="nohup $main > $(quote_words "$NAME.log") 2>&1 < /dev/null & echo started"
fi
run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all \
  --command="cd $(quote_words "$REMOTE_DIR") && export JAXSTEP_DISTRIBUTED=1 && $main"
