#!/usr/bin/env bash
# Evaluate a checkpoint on one GPU (DEVICE_ID, default 0).
#
#   bash scripts/run_eval_gpu.sh CHECKPOINT [cifar10|imagenet] [--key=value ...]
#
# e.g. --val_data_path=/data/imagenet/val. Log: OUTPUT_DIR (default ./eval_<dataset>)/eval.log.
# Exit codes: see scripts/launch_common.sh.
set -euo pipefail
USAGE="bash scripts/run_eval_gpu.sh CHECKPOINT [cifar10|imagenet] [--key=value ...]"
# shellcheck source=scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
export DEVICE_ID=${DEVICE_ID:-0}
run_eval GPU "$@"
