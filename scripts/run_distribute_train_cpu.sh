#!/usr/bin/env bash
# Data-parallel training on CPU with msrun: WORKER_NUM processes, each reading its own shard of the
# data with batch_size images per step (global batch = WORKER_NUM x batch_size); gradients averaged.
#
#   bash scripts/run_distribute_train_cpu.sh WORKER_NUM [cifar10|imagenet] [--key=value ...]
#
# One machine: all WORKER_NUM workers start here. Several machines: run the same command on each,
# with the cluster shape in the environment:
#   LOCAL_WORKER_NUM  workers on this machine (default WORKER_NUM)
#   NODE_RANK         this machine's index, 0 on the master (default 0)
#   MASTER_ADDR       address of the NODE_RANK=0 machine (default 127.0.0.1)
#   MASTER_PORT       its free port for the cluster (default 8118)
#   CLUSTER_TIME_OUT  seconds to wait for all workers to join (default 600)
# Outputs: OUTPUT_DIR (default ./train_distribute) holds logs/worker_<rank>.log (+ scheduler.log on
# node 0) and ckpt/ (rank 0's checkpoints). --key=value flags go to train.py (python train.py --help).
# Exit codes: see scripts/launch_common.sh.
set -euo pipefail
USAGE="bash scripts/run_distribute_train_cpu.sh WORKER_NUM [cifar10|imagenet] [--key=value ...]"
# shellcheck source=scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

[ $# -ge 1 ] || usage_error "missing WORKER_NUM"
WORKER_NUM=$1
shift
in_range "$WORKER_NUM" 1 1024 || usage_error "WORKER_NUM=$WORKER_NUM; expected a number of workers, 1..1024"
parse_dataset_and_flags "$@"
check_cluster_shape "$WORKER_NUM"
resolve_python

OUT=$(abs_path "${OUTPUT_DIR:-$PWD/train_distribute}")
mkdir -p "$OUT/logs"
echo "training $DATASET on CPU, data parallel; outputs in $OUT"
if [ "$NODE_RANK" -eq 0 ]; then
  echo "checkpoints: $OUT/ckpt (written by rank 0)"
fi
read -r -a CONFIG <<<"$(config_args CPU)"
if run_msrun "$WORKER_NUM" "$OUT/logs" "$ROOT/train.py" "${CONFIG[@]}" --ckpt_save_dir="$OUT/ckpt" \
  "${PASSTHROUGH[@]}"; then
  echo "train success; logs: $OUT/logs"
else
  STATUS=$?
  echo "error: distributed training failed (msrun exit $STATUS)$(first_worker_error "$OUT"/logs/worker_*.log);" \
    "see $OUT/logs/worker_<rank>.log and scheduler.log" >&2
  exit "$EXIT_FAILED"
fi
