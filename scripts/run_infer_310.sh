#!/usr/bin/env bash
# Offline inference: preprocess -> ascend310_infer app -> postprocess, in the current folder.
#   bash scripts/run_infer_310.sh MODEL_PATH DATASET DATA_PATH [LABEL_FILE] [DEVICE_ID]
# MODEL_PATH: a .mindir runs on Ascend 310 through MindSpore's C++ API; an .onnx runs on the CPU
#   through OpenVINO (INFER_BACKEND=mindspore|openvino overrides the choice).
# DATASET: cifar10 (DATA_PATH = folder with test_batch.bin) or imagenet (DATA_PATH = folder of JPEGs,
#   flat or one sub-folder per class).
# LABEL_FILE: imagenet: lines '<image name> <class index>'; written by preprocess.py from the class
#   folders when omitted (or '-'). cifar10: not used, pass '-' to give a DEVICE_ID.
# CIFAR-10 images are transformed to IMAGE_HEIGHT x IMAGE_WIDTH (default 224; must equal the model's
#   input) in batches of BATCH_SIZE (default 1; the model's export_batch_size).
# Outputs: preprocess_Result/, result_Files/, time_Result/, infer.log, acc.log.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}

usage="usage: bash scripts/run_infer_310.sh MODEL_PATH DATASET DATA_PATH [LABEL_FILE] [DEVICE_ID]"
fail() { echo "error: $*" >&2; exit 1; }

if [ $# -lt 3 ] || [ $# -gt 5 ]; then fail "expected 3 to 5 arguments, got $#; $usage"; fi
MODEL_PATH=$(realpath -m "$1")
DATASET=$2
DATA_PATH=$(realpath -m "$3")
LABEL_FILE=${4:--}
DEVICE_ID=${5:-0}
IMAGE_HEIGHT=${IMAGE_HEIGHT:-224}
IMAGE_WIDTH=${IMAGE_WIDTH:-224}
BATCH_SIZE=${BATCH_SIZE:-1}

[ -f "$MODEL_PATH" ] || fail "MODEL_PATH $MODEL_PATH does not exist; export one with export.py"
case "$DATASET" in cifar10|imagenet) ;; *) fail "DATASET '$DATASET' is not supported; expected cifar10 or imagenet" ;; esac
[ -e "$DATA_PATH" ] || fail "DATA_PATH $DATA_PATH does not exist"
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || fail "DEVICE_ID '$DEVICE_ID' is not a device number (0, 1, ...)"
if [ "$LABEL_FILE" != "-" ] && [ "$DATASET" = imagenet ]; then
    LABEL_FILE=$(realpath -m "$LABEL_FILE")
    [ -f "$LABEL_FILE" ] || fail "LABEL_FILE $LABEL_FILE does not exist"
fi

BACKEND=${INFER_BACKEND:-}
if [ -z "$BACKEND" ]; then
    case "${MODEL_PATH,,}" in
        *.mindir) BACKEND=mindspore ;;
        *.onnx) BACKEND=openvino ;;
        *) fail "MODEL_PATH $MODEL_PATH is neither .mindir (Ascend 310) nor .onnx (CPU); set INFER_BACKEND" ;;
    esac
fi

rm -rf result_Files time_Result
if [ "$DATASET" = cifar10 ]; then
    echo "preprocessing $DATA_PATH"
    "$PYTHON" "$REPO/preprocess.py" --dataset=cifar10 --data_path="$DATA_PATH" --output_path=./preprocess_Result \
        --image_height="$IMAGE_HEIGHT" --image_width="$IMAGE_WIDTH" --batch_size="$BATCH_SIZE"
    INPUT_PATH=./preprocess_Result/00_data
    LABEL_PATH=./preprocess_Result/01_label
else
    INPUT_PATH=$DATA_PATH
    LABEL_PATH=$LABEL_FILE
    if [ "$LABEL_FILE" = "-" ]; then
        "$PYTHON" "$REPO/preprocess.py" --dataset=imagenet --data_path="$DATA_PATH" --output_path=./preprocess_Result
        LABEL_PATH=./preprocess_Result/imagenet_label.txt
    fi
fi

echo "building the $BACKEND app"
PYTHON="$PYTHON" bash "$REPO/ascend310_infer/build.sh" "$BACKEND"

echo "running inference (log: infer.log)"
if ! "$REPO/ascend310_infer/out/$BACKEND/main" --model_path="$MODEL_PATH" --dataset="$DATASET" \
        --dataset_path="$INPUT_PATH" --device_id="$DEVICE_ID" >infer.log 2>&1; then
    tail -n 20 infer.log >&2
    fail "inference failed (full log: infer.log)"
fi
tail -n 1 infer.log

"$PYTHON" "$REPO/postprocess.py" --dataset="$DATASET" --result_path=./result_Files --label_path="$LABEL_PATH" \
    >acc.log
cat acc.log
