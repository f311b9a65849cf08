#!/usr/bin/env bash
# Runs jaxstep on a Cloud TPU VM or pod slice: create (or reuse) the TPU, copy this
# checkout to every worker, install it with the [tpu] extra, and start
# `python3 -m jaxstep.main` on all workers at once (one JAX process per worker).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh --zone ZONE --config CONFIG [options] [-- MAIN_ARGS...]

Creates the TPU VM when `gcloud compute tpus tpu-vm describe` cannot find it (a
PREEMPTED/TERMINATED Spot VM is deleted and created again, a STOPPED one started),
copies the code (this checkout, without .git/runs/venvs) to all workers, installs it
with `pip install -e '.[tpu]'`, then runs on all workers:
  export JAXSTEP_DISTRIBUTED=1 && python3 -m jaxstep.main --config=CONFIG --workdir=WORKDIR MAIN_ARGS
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
  --remote-dir DIR         code folder on the workers, relative to home (default: jaxstep)
  --skip-create            never create: fail if the TPU does not exist
  --skip-install           do not copy or install the code (already there)
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
  install+="; cd $(quote_words "$REMOTE_DIR"); python3 -m pip install --upgrade pip -q"
  install+="; python3 -m pip install -q -e '.[tpu]'"
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$install"
fi

# 3. Run jaxstep.main on all workers.
main="python3 -m jaxstep.main $(quote_words --config="$CONFIG" --workdir="$WORKDIR")"
[[ -n "$EXTRA_ARGS" ]] && main+=" $EXTRA_ARGS"
[[ ${#MAIN_ARGS[@]} -gt 0 ]] && main+=" $(quote_words "${MAIN_ARGS[@]}")"
if [[ $DETACH -eq 1 ]]; then
  main="nohup $main > $(quote_words "$NAME.log") 2>&1 < /dev/null & echo started"
fi
run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all \
  --command="cd $(quote_words "$REMOTE_DIR") && export JAXSTEP_DISTRIBUTED=1 && $main"
