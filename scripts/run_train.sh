#!/usr/bin/env bash
# Data-parallel training on the Ascend devices of one server, HCCL through a rank table: one
# process per device listed in RANK_TABLE_FILE, each exporting RANK_TABLE_FILE, RANK_SIZE,
# DEVICE_ID and RANK_ID, each bound to its own range of CPU cores (taskset) when there are enough.
#
#   bash scripts/run_train.sh RANK_TABLE_FILE [cifar10|imagenet] [--key=value ...]
#
# Outputs: OUTPUT_DIR (default .) gets one folder train_parallel<i>/ per device, the process's working
# directory, holding train.log and env.log; rank 0 writes the checkpoints to train_parallel0/ckpt/.
# --key=value flags go to train.py (relative paths in them are made absolute first).
# The script waits for the job; when one process fails it stops the others.
# Exit codes: see scripts/launch_common.sh.
set -euo pipefail
USAGE="bash scripts/run_train.sh RANK_TABLE_FILE [cifar10|imagenet] [--key=value ...]"
# shellcheck source=scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
readonly MAX_DEVICES=8

[ $# -ge 1 ] || usage_error "missing RANK_TABLE_FILE"
RANK_TABLE_FILE=$(abs_path "$1")
shift
parse_dataset_and_flags "$@"
require_file "$RANK_TABLE_FILE" "rank table"
RANK_SIZE=$(grep -o '"rank_id"' "$RANK_TABLE_FILE" | wc -l)
in_range "$RANK_SIZE" 1 "$MAX_DEVICES" \
  || usage_error "rank table $RANK_TABLE_FILE lists $RANK_SIZE devices (\"rank_id\" entries); expected 1..$MAX_DEVICES on this server"
resolve_python
absolutize_flag_paths

OUT=$(abs_path "${OUTPUT_DIR:-$PWD}")
CORES=$(nproc)
CORES_PER_PROCESS=$((CORES / RANK_SIZE))
TASKSET=$(command -v taskset || true)
if [ -z "$TASKSET" ] || [ "$CORES_PER_PROCESS" -lt 1 ]; then
  echo "not binding cores (taskset $([ -n "$TASKSET" ] && echo "found" || echo "missing"), $CORES cores for $RANK_SIZE processes)"
  TASKSET=""
fi
read -r -a CONFIG <<<"$(config_args Ascend)"
export RANK_TABLE_FILE RANK_SIZE
ulimit -u unlimited 2>/dev/null || true

PIDS=()
for ((i = 0; i < RANK_SIZE; i++)); do
  folder="$OUT/train_parallel$i"
  mkdir -p "$folder"
  bind=()
  if [ -n "$TASKSET" ]; then
    bind=("$TASKSET" -c "$((i * CORES_PER_PROCESS))-$(((i + 1) * CORES_PER_PROCESS - 1))")
  fi
  echo "device $i: rank $i of $RANK_SIZE${bind[*]:+, cores ${bind[2]}}; log $folder/train.log"
  (
    cd "$folder"
    export DEVICE_ID=$i RANK_ID=$i
    env >env.log
    exec "${bind[@]}" "$PYTHON" "$ROOT/train.py" "${CONFIG[@]}" --ckpt_save_dir="$OUT/train_parallel0/ckpt" \
      "${PASSTHROUGH[@]}" >train.log 2>&1
  ) &
  PIDS+=("$!")
done
echo "checkpoints: $OUT/train_parallel0/ckpt (written by rank 0); waiting for the $RANK_SIZE processes"
if wait_for_children "${PIDS[@]}"; then
  echo "train success; logs: $OUT/train_parallel<i>/train.log"
else
  STATUS=$?
  echo "error: training failed (exit $STATUS)$(first_worker_error "$OUT"/train_parallel*/train.log);" \
    "see $OUT/train_parallel<i>/train.log" >&2
  exit "$EXIT_FAILED"
fi
