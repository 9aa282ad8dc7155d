#!/usr/bin/env bash
# Offline inference: preprocess -> ascend310_infer app -> postprocess, in the current folder.
#   bash scripts/run_infer_310.sh MODEL_PATH DATASET DATA_PATH [LABEL_FILE] [DEVICE_ID]
# MODEL_PATH: a .mindir runs on Ascend 310 through MindSpore's C++ API; an .onnx runs on the CPU
#   through OpenVINO (INFER_BACKEND=mindspore|openvino overrides the choice).
# DATASET: cifar10 (DATA_PATH = folder with test_batch.bin, or the one holding it) or imagenet (DATA_PATH = folder of JPEGs,
#   flat or one sub-folder per class).
# LABEL_FILE: imagenet: lines '<image name> <class index>'; written by preprocess.py from the class
#   folders when omitted (or '-'). cifar10: not used, pass '-' to give a DEVICE_ID.
# preprocess.py reads CONFIG_PATH (default: the repository's <DATASET>_config.yaml, the file export.py
#   used): CIFAR-10 images are transformed to its image_height x image_width in batches of its
#   export_batch_size (both must be the model's input). IMAGE_HEIGHT, IMAGE_WIDTH and BATCH_SIZE in the
#   environment override them.
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
CONFIG_PATH=$(realpath -m "${CONFIG_PATH:-$REPO/${DATASET}_config.yaml}")

[ -f "$MODEL_PATH" ] || fail "MODEL_PATH $MODEL_PATH does not exist; export one with export.py"
case "$DATASET" in cifar10|imagenet) ;; *) fail "DATASET '$DATASET' is not supported; expected cifar10 or imagenet" ;; esac
[ -e "$DATA_PATH" ] || fail "DATA_PATH $DATA_PATH does not exist"
[ -f "$CONFIG_PATH" ] || fail "CONFIG_PATH $CONFIG_PATH does not exist"
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

preprocess() {
    local sizes=()
    [ -z "${IMAGE_HEIGHT:-}" ] || sizes+=(--image_height="$IMAGE_HEIGHT")
    [ -z "${IMAGE_WIDTH:-}" ] || sizes+=(--image_width="$IMAGE_WIDTH")
    [ -z "${BATCH_SIZE:-}" ] || sizes+=(--export_batch_size="$BATCH_SIZE")
    "$PYTHON" "$REPO/preprocess.py" --config_path="$CONFIG_PATH" --dataset_name="$DATASET" \
        --val_data_path="$DATA_PATH" --output_path=./preprocess_Result "${sizes[@]}"
}

# Missing compilers or headers stop here with one line, before any output is written.
PYTHON="$PYTHON" bash "$REPO/ascend310_infer/build.sh" --check "$BACKEND"

rm -rf result_Files time_Result
if [ "$DATASET" = cifar10 ]; then
    echo "preprocessing $DATA_PATH"
    preprocess
    INPUT_PATH=./preprocess_Result/00_data
    LABEL_FILE=./preprocess_Result/01_label
else
    INPUT_PATH=$DATA_PATH
    if [ "$LABEL_FILE" = "-" ]; then
        preprocess
        LABEL_FILE=./preprocess_Result/imagenet_label.txt
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

"$PYTHON" "$REPO/postprocess.py" --dataset="$DATASET" --result_path=./result_Files --label_file="$LABEL_FILE" \
    >acc.log
cat acc.log
