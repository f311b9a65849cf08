#!/usr/bin/env bash
# Runs jaxstep on SLURM GPU nodes: writes a batch script that starts one JAX process per
# node (or per GPU) with srun, with the jax.distributed coordinator taken from the
# allocation, and submits it with sbatch (or runs it inside an existing allocation).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm_gpu.sh --config CONFIG [options] [-- MAIN_ARGS...]

Writes WORKDIR/slurm/jaxstep-<time>.sbatch and submits it with sbatch. In the job:
  JAX_COORDINATOR_ADDRESS=<first node>:PORT  JAX_NUM_PROCESSES=$SLURM_NTASKS
  srun ... (per task: JAX_PROCESS_ID=$SLURM_PROCID) PY -m jaxstep.main \
      --config=CONFIG --workdir=WORKDIR [--config.data.data_dir=DATA] MAIN_ARGS
jaxstep.main sees these variables and calls jax.distributed.initialize().

The job runs in this checkout (on a filesystem the nodes share) with the Python
given by --python, after --setup. jaxstep needs Python >= 3.11 with the checkout
installed (`pip install -e '.[gpu]'`); the job checks the version before srun and
stops with a message otherwise. Where the cluster's python3 is older, make a venv
once, e.g. `uv venv --python 3.11 .venv && uv pip install --python .venv/bin/python
-e '.[gpu]'` (uv downloads a managed CPython), and pass `--python .venv/bin/python`.

Options:
  --config CONFIG          config file, optionally with a preset: configs/ppo_prm_max.py:paper
                           (relative to the repository root; required)
  --workdir DIR            run folder on a filesystem shared by all nodes
                           (default: runs/JOB_NAME; made absolute)
  --nodes N                nodes (default: 1)
  --gpus-per-node G        GPUs per node (default: 8)
  --tasks-per-node T       JAX processes per node: 1 drives all the node's GPUs
                           (default); G gives one process per GPU
  --cpus-per-task C        CPUs per task (default: SLURM's)
  --partition P            partition (default: SLURM's)
  --account A              account to charge (default: SLURM's)
  --qos Q                  quality of service (default: SLURM's)
  --time T                 time limit, e.g. 24:00:00 (default: SLURM's)
  --job-name NAME          job name (default: jaxstep)
  --port PORT              jax.distributed coordinator port on the first node (default: 12355)
  --python PY              Python interpreter on the nodes, >= 3.11, with jaxstep
                           installed; relative paths are from the checkout (default: python3)
  --data DIR               folder holding gsm8k/ and math/ on the shared filesystem,
                           passed as --config.data.data_dir (made absolute; gs:// is
                           not staged here: copy it first with gcloud storage rsync)
  --setup "CMDS"           shell commands run first in the job, e.g.
                           "module load cuda/12.4; source venv/bin/activate"
  --extra-args "ARGS"      extra words for jaxstep.main, inserted as written; words
                           after `--` are passed quoted, one argument each
  --script PATH            where to write the batch script (default: see above)
  --srun                   run the script now with bash (inside an allocation from
                           salloc) instead of submitting it with sbatch
  --dry-run                print the batch script and the command instead of running it
  -h, --help               show this help
EOF
}

CONFIG=""
WORKDIR=""
NODES=1
GPUS_PER_NODE=8
TASKS_PER_NODE=1
CPUS_PER_TASK=""
PARTITION=""
ACCOUNT=""
QOS=""
TIME_LIMIT=""
JOB_NAME="jaxstep"
PORT=12355
PYTHON="python3"
SETUP=""
DATA=""
EXTRA_ARGS=""
SCRIPT=""
USE_SRUN=0
DRY_RUN=0
MAIN_ARGS=()

die() { echo "launch/slurm_gpu.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see -h)"; }
need_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "option $1 needs a positive integer, got '$2'"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --nodes) need_value "$@"; need_int "$@"; NODES="$2"; shift 2 ;;
    --gpus-per-node) need_value "$@"; need_int "$@"; GPUS_PER_NODE="$2"; shift 2 ;;
    --tasks-per-node) need_value "$@"; need_int "$@"; TASKS_PER_NODE="$2"; shift 2 ;;
    --cpus-per-task) need_value "$@"; need_int "$@"; CPUS_PER_TASK="$2"; shift 2 ;;
    --partition) need_value "$@"; PARTITION="$2"; shift 2 ;;
    --account) need_value "$@"; ACCOUNT="$2"; shift 2 ;;
    --qos) need_value "$@"; QOS="$2"; shift 2 ;;
    --time) need_value "$@"; TIME_LIMIT="$2"; shift 2 ;;
    --job-name) need_value "$@"; JOB_NAME="$2"; shift 2 ;;
    --port) need_value "$@"; need_int "$@"; PORT="$2"; shift 2 ;;
    --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
    --setup) need_value "$@"; SETUP="$2"; shift 2 ;;
    --data) need_value "$@"; DATA="$2"; shift 2 ;;
    --extra-args) need_value "$@"; EXTRA_ARGS="$2"; shift 2 ;;
    --script) need_value "$@"; SCRIPT="$2"; shift 2 ;;
    --srun) USE_SRUN=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # --flag=value -> --flag value
    *) die "unknown argument '$1' (see -h)" ;;
  esac
done

[[ -n "$CONFIG" ]] || die "--config is required"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$REPO_ROOT/${CONFIG%%:*}" ]] || die "config file ${CONFIG%%:*} not found under $REPO_ROOT"
if (( TASKS_PER_NODE > 1 && TASKS_PER_NODE != GPUS_PER_NODE )); then
  die "--tasks-per-node must be 1 (one process per node) or --gpus-per-node ($GPUS_PER_NODE)"
fi
[[ -n "$WORKDIR" ]] || WORKDIR="runs/$JOB_NAME"
[[ "$WORKDIR" == /* || "$WORKDIR" == *://* ]] || WORKDIR="$PWD/$WORKDIR"
if [[ -n "$DATA" ]]; then
  [[ "$DATA" != *://* ]] || die "--data must be a folder on the nodes' shared filesystem, got '$DATA' (copy gs:// data there first: gcloud storage rsync --recursive SRC DIR)"
  [[ -d "$DATA" ]] || die "--data folder $DATA not found"
  DATA="$(cd "$DATA" && pwd)"
fi
[[ -n "$SCRIPT" ]] || SCRIPT="$WORKDIR/slurm/$JOB_NAME-$(date +%Y%m%d-%H%M%S).sbatch"

# Shell-quotes words: plain words as they are, others in single quotes.
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

# Per-task environment, set inside srun (SLURM_PROCID/SLURM_LOCALID differ per task).
task_env='export JAX_PROCESS_ID="$SLURM_PROCID"'
if (( TASKS_PER_NODE > 1 )); then
  task_env+='; export JAX_LOCAL_DEVICE_IDS="$SLURM_LOCALID"'
fi
main_cmd="$(quote_words "$PYTHON" -m jaxstep.main --config="$CONFIG" --workdir="$WORKDIR")"
[[ -n "$DATA" ]] && main_cmd+=" $(quote_words --config.data.data_dir="$DATA")"
[[ -n "$EXTRA_ARGS" ]] && main_cmd+=" $EXTRA_ARGS"
[[ ${#MAIN_ARGS[@]} -gt 0 ]] && main_cmd+=" $(quote_words "${MAIN_ARGS[@]}")"

sbatch_lines=(
  "--job-name=$JOB_NAME"
  "--nodes=$NODES"
  "--ntasks-per-node=$TASKS_PER_NODE"
  "--gpus-per-node=$GPUS_PER_NODE"
  "--output=$WORKDIR/slurm/%x-%j.out"
)
[[ -n "$CPUS_PER_TASK" ]] && sbatch_lines+=("--cpus-per-task=$CPUS_PER_TASK")
[[ -n "$PARTITION" ]] && sbatch_lines+=("--partition=$PARTITION")
[[ -n "$ACCOUNT" ]] && sbatch_lines+=("--account=$ACCOUNT")
[[ -n "$QOS" ]] && sbatch_lines+=("--qos=$QOS")
[[ -n "$TIME_LIMIT" ]] && sbatch_lines+=("--time=$TIME_LIMIT")

write_script() {
  echo "#!/usr/bin/env bash"
  echo "# Generated by launch/slurm_gpu.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
  local line
  for line in "${sbatch_lines[@]}"; do echo "#SBATCH $line"; done
  cat <<EOF
set -euo pipefail
cd $(quote_words "$REPO_ROOT")
mkdir -p $(quote_words "$WORKDIR/slurm")
${SETUP}

# jaxstep needs Python >= 3.11 (setup.py); fail here rather than in every task.
if ! $(quote_words "$PYTHON") -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "jaxstep: $(quote_words "$PYTHON") is not Python >= 3.11; pass --python (e.g. a venv made with 'uv venv --python 3.11') or --setup" >&2
  exit 1
fi

# jax.distributed coordinator: process 0 runs on the first node of the allocation.
head_node="\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1)"
export JAX_COORDINATOR_ADDRESS="\${head_node}:$PORT"
export JAX_NUM_PROCESSES="\$SLURM_NTASKS"
echo "jaxstep: \$JAX_NUM_PROCESSES processes, coordinator \$JAX_COORDINATOR_ADDRESS"

srun --nodes=$NODES --ntasks-per-node=$TASKS_PER_NODE --kill-on-bad-exit=1 \\
  bash -c $(quote_words "$task_env; exec \"\$@\"") jaxstep-task \\
  $main_cmd
EOF
}

if [[ $USE_SRUN -eq 1 ]]; then
  launch=(bash "$SCRIPT")
else
  launch=(sbatch "$SCRIPT")
fi

if [[ $DRY_RUN -eq 1 ]]; then
  echo "# $SCRIPT:"
  write_script
  echo "# command:"
  quote_words "${launch[@]}"
  exit 0
fi

mkdir -p "$(dirname "$SCRIPT")" "$WORKDIR/slurm"
write_script > "$SCRIPT"
chmod +x "$SCRIPT"
echo "launch/slurm_gpu.sh: wrote $SCRIPT" >&2
"${launch[@]}"
