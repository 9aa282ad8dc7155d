#!/usr/bin/env bash
# Data-parallel training on DEVICE_NUM GPUs of this machine (NCCL), started with msrun, or with
# mpirun when LAUNCHER=mpirun (and mpirun is installed).
#
#   bash scripts/run_train_gpu.sh DEVICE_NUM VISIBLE_DEVICES [cifar10|imagenet] [--key=value ...]
#   e.g. bash scripts/run_train_gpu.sh 8 0,1,2,3,4,5,6,7 imagenet --train_data_path=/data/imagenet/train
#
# Several machines (msrun only): run the same command on each, with in the environment
#   WORKER_NUM   GPUs in the whole job (default DEVICE_NUM); NODE_RANK, MASTER_ADDR, MASTER_PORT,
#   CLUSTER_TIME_OUT as for scripts/run_distribute_train_cpu.sh.
# Outputs: OUTPUT_DIR (default ./train_parallel) holds logs/ (msrun: worker_<rank>.log and
# scheduler.log; mpirun: its per-rank output files) and ckpt/ (rank 0's checkpoints).
# --key=value flags go to train.py. Exit codes: see scripts/launch_common.sh.
set -euo pipefail
USAGE="bash scripts/run_train_gpu.sh DEVICE_NUM VISIBLE_DEVICES [cifar10|imagenet] [--key=value ...]"
# shellcheck source=scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
readonly MAX_DEVICES=8

[ $# -ge 2 ] || usage_error "expected DEVICE_NUM and VISIBLE_DEVICES"
DEVICE_NUM=$1
VISIBLE_DEVICES=$2
shift 2
in_range "$DEVICE_NUM" 1 "$MAX_DEVICES" || usage_error "DEVICE_NUM=$DEVICE_NUM; expected 1..$MAX_DEVICES GPUs"
[[ $VISIBLE_DEVICES =~ ^[0-9]+(,[0-9]+)*$ ]] \
  || usage_error "VISIBLE_DEVICES=$VISIBLE_DEVICES; expected comma-separated GPU ids, e.g. 0,1,2,3"
IFS=, read -r -a DEVICES <<<"$VISIBLE_DEVICES"
[ "${#DEVICES[@]}" -eq "$DEVICE_NUM" ] \
  || usage_error "VISIBLE_DEVICES=$VISIBLE_DEVICES names ${#DEVICES[@]} GPUs but DEVICE_NUM=$DEVICE_NUM"
[ "$(printf '%s\n' "${DEVICES[@]}" | sort -u | wc -l)" -eq "$DEVICE_NUM" ] \
  || usage_error "VISIBLE_DEVICES=$VISIBLE_DEVICES repeats a GPU id"
parse_dataset_and_flags "$@"
LAUNCHER=${LAUNCHER:-msrun}
case "$LAUNCHER" in
  msrun | mpirun) ;;
  *) usage_error "LAUNCHER=$LAUNCHER; expected msrun or mpirun" ;;
esac
WORKER_NUM=${WORKER_NUM:-$DEVICE_NUM}
in_range "$WORKER_NUM" "$DEVICE_NUM" 65536 || usage_error "WORKER_NUM=$WORKER_NUM; expected the GPUs of the whole job, >= DEVICE_NUM"
LOCAL_WORKER_NUM=$DEVICE_NUM
check_cluster_shape "$WORKER_NUM"
resolve_python

OUT=$(abs_path "${OUTPUT_DIR:-$PWD/train_parallel}")
mkdir -p "$OUT/logs"
export CUDA_VISIBLE_DEVICES=$VISIBLE_DEVICES
echo "training $DATASET on GPUs $VISIBLE_DEVICES with $LAUNCHER; outputs in $OUT, checkpoints: $OUT/ckpt (written by rank 0)"
read -r -a CONFIG <<<"$(config_args GPU)"
TRAIN=("$ROOT/train.py" "${CONFIG[@]}" --ckpt_save_dir="$OUT/ckpt" "${PASSTHROUGH[@]}")
if [ "$LAUNCHER" = mpirun ]; then
  [ "$WORKER_NUM" -eq "$DEVICE_NUM" ] || usage_error "LAUNCHER=mpirun starts one machine here; use msrun for WORKER_NUM=$WORKER_NUM"
  MPIRUN=$(resolve_tool mpirun)
  [ -n "$MPIRUN" ] || die "$EXIT_ENVIRONMENT" "LAUNCHER=mpirun but mpirun is not installed (install OpenMPI, or use the default msrun)"
  ROOT_FLAG=()
  [ "$(id -u)" -ne 0 ] || ROOT_FLAG=(--allow-run-as-root)
  echo "logs: $OUT/logs/ (mpirun output files per rank)"
  "$MPIRUN" -n "$DEVICE_NUM" "${ROOT_FLAG[@]}" --output-filename "$OUT/logs" --merge-stderr-to-stdout \
    "$PYTHON" "${TRAIN[@]}" &
  if wait_for_children "$!"; then STATUS=0; else STATUS=$?; fi
else
  if run_msrun "$WORKER_NUM" "$OUT/logs" "${TRAIN[@]}"; then STATUS=0; else STATUS=$?; fi
fi
if [ "$STATUS" -ne 0 ]; then
  echo "error: distributed training failed ($LAUNCHER exit $STATUS)$(first_worker_error "$OUT"/logs/worker_*.log);" \
    "see the logs in $OUT/logs" >&2
  exit "$EXIT_FAILED"
fi
echo "train success; logs: $OUT/logs"
