# Helpers shared by the training and evaluation launchers in scripts/ (sourced, never run).
# shellcheck shell=bash
#
# Exit codes of every launcher:
#   0 success   1 the job failed (see its logs)   2 wrong arguments (usage printed)
#   3 a file or folder given does not exist       4 the environment lacks Python+MindSpore, msrun or mpirun
#   130 interrupted (all started processes are stopped first)
#
# Environment read by every launcher:
#   PYTHON      interpreter with MindSpore installed (default: python, else python3, from PATH)
#   OUTPUT_DIR  folder that receives logs and checkpoints (default: a folder in the current directory)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly EXIT_FAILED=1 EXIT_USAGE=2 EXIT_MISSING=3 EXIT_ENVIRONMENT=4 EXIT_INTERRUPTED=130
DATASET=cifar10
PASSTHROUGH=()

# die CODE MESSAGE: one error line on stderr, then exit CODE.
die() {
  echo "error: $2" >&2
  exit "$1"
}

# usage_error MESSAGE: the problem, the script's usage line ($USAGE), exit 2.
usage_error() {
  echo "error: $1" >&2
  echo "usage: $USAGE" >&2
  exit "$EXIT_USAGE"
}

# in_range VALUE LOW HIGH: VALUE is a whole number in [LOW, HIGH].
in_range() {
  [[ $1 =~ ^[0-9]{1,9}$ ]] && [ $((10#$1)) -ge "$2" ] && [ $((10#$1)) -le "$3" ]
}

abs_path() {
  realpath -m -s -- "$1"
}

require_file() { # require_file PATH WHAT
  [ -f "$1" ] || die "$EXIT_MISSING" "$2 $1 does not exist or is not a file"
}

# parse_dataset_and_flags ARGS...: an optional dataset name (cifar10|imagenet), then --key=value
# flags passed through to the Python script (any config key; see: python train.py --help).
parse_dataset_and_flags() {
  if [ $# -gt 0 ] && [[ $1 != --* ]]; then
    case "$1" in
      cifar10 | imagenet) DATASET=$1 ;;
      *) usage_error "dataset '$1' is not supported; expected cifar10 or imagenet" ;;
    esac
    shift
  fi
  local arg
  for arg in "$@"; do
    [[ $arg == --?* ]] || usage_error "unexpected argument '$arg'; extra arguments must be --key=value flags"
  done
  PASSTHROUGH=("$@")
}

# absolutize_flag_paths: in PASSTHROUGH, --key=value whose value names an existing relative path
# gets its absolute path (for launchers that start processes in other working directories).
absolutize_flag_paths() {
  local i key value
  for i in "${!PASSTHROUGH[@]}"; do
    [[ ${PASSTHROUGH[$i]} == --*=* ]] || continue
    key=${PASSTHROUGH[$i]%%=*}
    value=${PASSTHROUGH[$i]#*=}
    if [ -n "$value" ] && [[ $value != /* ]] && [ -e "$value" ]; then
      PASSTHROUGH[i]="$key=$(abs_path "$value")"
    fi
  done
}

# config_args DEVICE: the --config_path (and overrides) for $DATASET on DEVICE (Ascend|GPU|CPU).
config_args() {
  case "$DATASET/$1" in
    cifar10/CPU) echo "--config_path=$ROOT/cifar10_config_cpu.yaml" ;;
    cifar10/*) echo "--config_path=$ROOT/cifar10_config.yaml --device_target=$1" ;;
    imagenet/CPU) echo "--config_path=$ROOT/imagenet_config.yaml --device_target=CPU --amp_level=O0" ;;
    imagenet/*) echo "--config_path=$ROOT/imagenet_config.yaml --device_target=$1" ;;
  esac
}

# resolve_python: set PYTHON to the absolute path of an interpreter that can import mindspore.
resolve_python() {
  local candidate=${PYTHON:-}
  if [ -z "$candidate" ]; then
    candidate=$(command -v python || command -v python3 || true)
    [ -n "$candidate" ] || die "$EXIT_ENVIRONMENT" "no python on PATH; activate the environment MindSpore is installed in, or set PYTHON=/path/to/python"
  fi
  local resolved
  resolved=$(command -v -- "$candidate" || true)
  [ -n "$resolved" ] || die "$EXIT_ENVIRONMENT" "PYTHON=$candidate is not an executable"
  PYTHON=$(abs_path "$resolved")
  "$PYTHON" -c "import mindspore" >/dev/null 2>&1 \
    || die "$EXIT_ENVIRONMENT" "$PYTHON cannot import mindspore; activate the environment MindSpore is installed in, or set PYTHON=/path/to/python"
}

# python_first_on_path DIR: msrun starts plain `python` from PATH; make that $PYTHON.
python_first_on_path() {
  mkdir -p "$1"
  printf '#!/bin/sh\nexec %q "$@"\n' "$PYTHON" >"$1/python.tmp"
  chmod +x "$1/python.tmp"
  mv -f "$1/python.tmp" "$1/python"
  PATH="$1:$PATH"
  export PATH
}

# resolve_tool NAME: the NAME next to $PYTHON (same environment), else NAME from PATH, else "".
resolve_tool() {
  local beside
  beside="$(dirname "$PYTHON")/$1"
  if [ -x "$beside" ]; then
    echo "$beside"
  else
    command -v "$1" || true
  fi
}

# check_cluster_shape TOTAL: validate LOCAL_WORKER_NUM, NODE_RANK, MASTER_ADDR, MASTER_PORT for a job
# of TOTAL workers (several machines: each runs the same launcher with its own NODE_RANK).
check_cluster_shape() {
  local total=$1
  LOCAL_WORKER_NUM=${LOCAL_WORKER_NUM:-$total}
  MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
  MASTER_PORT=${MASTER_PORT:-8118}
  NODE_RANK=${NODE_RANK:-0}
  in_range "$LOCAL_WORKER_NUM" 1 "$total" || usage_error "LOCAL_WORKER_NUM=$LOCAL_WORKER_NUM; expected workers on this machine, 1..$total"
  [ $((total % LOCAL_WORKER_NUM)) -eq 0 ] \
    || usage_error "LOCAL_WORKER_NUM=$LOCAL_WORKER_NUM does not divide the $total workers into equal machines"
  local nodes=$((total / LOCAL_WORKER_NUM))
  in_range "$NODE_RANK" 0 $((nodes - 1)) || usage_error "NODE_RANK=$NODE_RANK; expected this machine's index, 0..$((nodes - 1)) ($nodes machines)"
  in_range "$MASTER_PORT" 1024 65535 || usage_error "MASTER_PORT=$MASTER_PORT; expected a free port, 1024..65535"
  [ -n "$MASTER_ADDR" ] || usage_error "MASTER_ADDR is empty; expected the address of the machine with NODE_RANK=0"
}

# run_msrun TOTAL LOG_DIR SCRIPT ARGS...: start this machine's share of a TOTAL-worker msrun job
# and wait for it; Ctrl-C / TERM stop every worker. Returns msrun's exit status.
run_msrun() {
  local total=$1 log_dir=$2
  shift 2
  local msrun
  msrun=$(resolve_tool msrun)
  [ -n "$msrun" ] || die "$EXIT_ENVIRONMENT" "msrun not found beside $PYTHON or on PATH (it comes with MindSpore)"
  python_first_on_path "$log_dir/.python"
  # Read by train.py: a second node on the master's own host must leave the scheduler to node 0.
  export GOOGLENET_NODE_RANK=$NODE_RANK
  echo "msrun: $total workers in all, $LOCAL_WORKER_NUM on this machine (node $NODE_RANK), master $MASTER_ADDR:$MASTER_PORT"
  echo "logs: $log_dir/worker_<rank>.log$([ "$NODE_RANK" -eq 0 ] && echo " and $log_dir/scheduler.log")"
  "$msrun" --worker_num="$total" --local_worker_num="$LOCAL_WORKER_NUM" --master_addr="$MASTER_ADDR" \
    --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" --log_dir="$log_dir" --join=True \
    --cluster_time_out="${CLUSTER_TIME_OUT:-600}" "$@" &
  wait_for_children "$!"
}

# wait_for_children PID...: wait for all; when one fails, stop the others and return its status.
# INT/TERM stop all of them (msrun gets SIGINT, which makes it kill its workers) and exit 130.
wait_for_children() {
  local pids=("$@")
  # shellcheck disable=SC2064  # expand the pids now
  trap "stop_children ${pids[*]}; exit $EXIT_INTERRUPTED" INT TERM
  local status=0 remaining=${#pids[@]}
  while [ "$remaining" -gt 0 ]; do
    wait -n "${pids[@]}" || status=$?
    if [ "$status" -ne 0 ]; then
      stop_children "${pids[@]}"
      break
    fi
    remaining=$((remaining - 1))
  done
  trap - INT TERM
  return "$status"
}

stop_children() {
  local pid
  for pid in "$@"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "$@"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait "$@" 2>/dev/null || true
}

# first_worker_error LOG...: "; <log> says: <message>" for the first log holding a train.py
# `error:` line (a worker that could not start or stopped on a user error), else nothing.
first_worker_error() {
  local log line
  for log in "$@"; do
    [ -f "$log" ] || continue
    line=$(grep -a -m1 '^error: ' "$log" || true)
    if [ -n "$line" ]; then
      printf '; %s says: %s' "$(basename "$(dirname "$log")")/$(basename "$log")" "${line#error: }"
      return
    fi
  done
}

# run_logged LOG COMMAND...: run one process, its output to the terminal and LOG; its exit status.
run_logged() {
  local log=$1
  shift
  set +e
  "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  set -e
  return "$status"
}

# run_eval DEVICE CHECKPOINT [dataset] [--key=value ...]: evaluate one checkpoint on DEVICE.
run_eval() {
  local device=$1
  shift
  [ $# -ge 1 ] || usage_error "missing CHECKPOINT"
  local checkpoint
  checkpoint=$(abs_path "$1")
  shift
  parse_dataset_and_flags "$@"
  require_file "$checkpoint" "checkpoint"
  resolve_python
  local out
  out=$(abs_path "${OUTPUT_DIR:-$PWD/eval_$DATASET}")
  mkdir -p "$out"
  echo "evaluating $checkpoint on $device ($DATASET); log: $out/eval.log"
  local config
  read -r -a config <<<"$(config_args "$device")"
  if run_logged "$out/eval.log" "$PYTHON" "$ROOT/eval.py" "${config[@]}" --checkpoint_path="$checkpoint" \
    "${PASSTHROUGH[@]}"; then
    echo "log: $out/eval.log"
  else
    local status=$?
    echo "error: evaluation failed (exit $status); see $out/eval.log" >&2
    exit "$EXIT_FAILED"
  fi
}
