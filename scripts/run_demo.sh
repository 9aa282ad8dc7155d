#!/usr/bin/env bash
# End-to-end demo on CPU: train (evaluating every epoch, drawing the curves) -> eval -> export ->
# predict, on real CIFAR-10 binary data when a folder is given, else on a generated synthetic
# dataset in the CIFAR-10 layout (not CIFAR-10).
#   bash scripts/run_demo.sh [CIFAR10_DIR] [OUTPUT_DIR]
# CIFAR10_DIR: cifar-10-batches-bin, or the folder that holds it (what unpacking the archive leaves).
set -euo pipefail

if [ $# -gt 2 ]; then
  echo "usage: bash scripts/run_demo.sh [CIFAR10_DIR] [OUTPUT_DIR]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${2:-$ROOT/demo_output}")
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

if [ $# -ge 1 ]; then
  DATA=$(realpath -m "$1")
  if [ ! -d "$DATA" ]; then
    echo "error: data folder $DATA does not exist (expected cifar-10-batches-bin/ or the folder holding it)" >&2
    exit 1
  fi
  EPOCHS=${EPOCHS:-1}
else
  "$PYTHON" -m src.demo_data --dest "$OUT/data" --train 1000 --test 200 --png 6 >/dev/null
  DATA="$OUT/data/cifar-10-batches-bin"
  echo "demo data: synthetic images in the CIFAR-10 binary layout (NOT CIFAR-10) at $DATA"
  EPOCHS=${EPOCHS:-3}
fi

COMMON=(--config_path="$ROOT/cifar10_config_cpu.yaml" --image_height=32 --image_width=32 --batch_size=16
        --lr_init=0.01 --epoch_size="$EPOCHS" --ckpt_save_dir="$OUT/ckpt")
cd "$ROOT"
echo "== train ($EPOCHS epochs at 32x32; log: $OUT/train.log)"
"$PYTHON" train.py "${COMMON[@]}" --train_data_path="$DATA" --val_data_path="$DATA" --eval_interval=1 2>&1 \
  | tee "$OUT/train.log" | grep -E "^(epoch|train success|\[INFO\]|\[WARNING\] matplotlib)"
# A rerun into the same folder writes train_googlenet_cifar10_<n>-*: take the newest files.
CKPT=$(ls -t "$OUT"/ckpt/train_googlenet_cifar10*-"$EPOCHS"_*.ckpt | head -n 1)
echo "== eval $CKPT"
"$PYTHON" eval.py "${COMMON[@]}" --val_data_path="$DATA" --checkpoint_path="$CKPT" 2>&1 | tee "$OUT/eval.log" | grep -E "^(accuracy|evaluated)"
echo "== export MINDIR"
"$PYTHON" export.py "${COMMON[@]}" --ckpt_file="$CKPT" --file_name="$OUT/googlenet" --file_format=MINDIR 2>&1 | tee "$OUT/export.log" | grep -E "^exported"
if [ -d "$OUT/data/images" ]; then
  echo "== predict $OUT/data/images (top 3, from the MINDIR)"
  "$PYTHON" predict.py "${COMMON[@]}" --predict_model="$OUT/googlenet.mindir" --predict_images="$OUT/data/images" \
    --class_names_file="$DATA/batches.meta.txt" --top_k=3 2>&1 | tee "$OUT/predict.log" | grep -E "\.png: "
fi
CURVES=$(ls -t "$OUT"/ckpt/train_googlenet_cifar10*-curves.png 2>/dev/null | head -n 1 || true)
echo "demo finished: outputs in $OUT (metrics log: $OUT/ckpt/*-metrics.jsonl)"
if [ -n "$CURVES" ]; then
  echo "curves: $CURVES"
else
  echo "no curves drawn (matplotlib missing: pip install -r requirements.txt)"
fi
