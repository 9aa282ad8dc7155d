#!/usr/bin/env bash
# Train on CPU in one process.
#
#   bash scripts/run_train_cpu.sh [cifar10|imagenet] [--key=value ...]
#
# Outputs: OUTPUT_DIR (default ./train_cpu) holds train.log and ckpt/. --key=value flags go to
# train.py, e.g. --train_data_path=/data/cifar-10-batches-bin (python train.py --help lists all).
# Exit codes: see scripts/launch_common.sh.
set -euo pipefail
USAGE="bash scripts/run_train_cpu.sh [cifar10|imagenet] [--key=value ...]"
# shellcheck source=scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"

parse_dataset_and_flags "$@"
resolve_python
OUT=$(abs_path "${OUTPUT_DIR:-$PWD/train_cpu}")
mkdir -p "$OUT"
echo "training $DATASET on CPU; log: $OUT/train.log, checkpoints: $OUT/ckpt"
read -r -a CONFIG <<<"$(config_args CPU)"
if run_logged "$OUT/train.log" "$PYTHON" "$ROOT/train.py" "${CONFIG[@]}" --ckpt_save_dir="$OUT/ckpt" \
  "${PASSTHROUGH[@]}"; then
  echo "log: $OUT/train.log, checkpoints: $OUT/ckpt"
else
  echo "error: training failed (exit $?); see $OUT/train.log" >&2
  exit "$EXIT_FAILED"
fi
