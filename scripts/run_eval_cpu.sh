#!/usr/bin/env bash
# Evaluate a checkpoint on CPU.
#
#   bash scripts/run_eval_cpu.sh CHECKPOINT [cifar10|imagenet] [--key=value ...]
#
# e.g. --val_data_path=/data/cifar-10-batches-bin. Log: OUTPUT_DIR (default ./eval_<dataset>)/eval.log.
# Exit codes: see scripts/launch_common.sh.
set -euo pipefail
USAGE="bash scripts/run_eval_cpu.sh CHECKPOINT [cifar10|imagenet] [--key=value ...]"
# shellcheck source=scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
run_eval CPU "$@"
