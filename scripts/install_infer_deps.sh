#!/usr/bin/env bash
# Build dependencies of the offline inference app (ascend310_infer), installed once and reused:
#   - Debian packages: C++ compiler, CMake, gflags, OpenCV (imgcodecs + imgproc);
#   - OpenVINO (CPU backend) into the active or the repository's .venv, when missing;
#   - the MindSpore C++ inference headers and library from the mindspore-lite 2.0.0 wheel,
#     unpacked into .deps/mindspore-lite-2.0.0 (ignored by git). That wheel is built for Python 3.7
#     only, but its C++ library needs no Python: it is downloaded, never installed.
# Usage: bash scripts/install_infer_deps.sh [--no-mindspore]
# Running it again does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

MS_LITE_VERSION=2.0.0
DEPS_DIR=${INFER_DEPS_DIR:-$PWD/.deps}
MS_LITE_DIR="$DEPS_DIR/mindspore-lite-$MS_LITE_VERSION"
scratch=""
APT_PACKAGES=(g++ cmake make libgflags-dev libopencv-imgcodecs-dev libopencv-imgproc-dev)

want_mindspore=1
for arg in "$@"; do
    case "$arg" in
        --no-mindspore) want_mindspore=0 ;;
        *) echo "error: unknown argument '$arg'; usage: bash scripts/install_infer_deps.sh [--no-mindspore]" >&2
           exit 2 ;;
    esac
done

install_apt_packages() {
    local missing=()
    for package in "${APT_PACKAGES[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "apt packages present: ${APT_PACKAGES[*]}"
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing apt packages: ${missing[*]}"
    $sudo apt-get -o APT::Sandbox::User=root update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A Python with pip for `pip download`: the active or repository venv, python3, or a small venv of
# our own in the cache folder (a fresh Debian python3 may lack pip).
python_cmd() {
    if [ -n "${VIRTUAL_ENV:-}" ]; then echo "$VIRTUAL_ENV/bin/python"
    elif [ -x .venv/bin/python ]; then echo "$PWD/.venv/bin/python"
    elif python3 -m pip --version >/dev/null 2>&1; then echo python3
    else
        [ -x "$DEPS_DIR/tools-venv/bin/python" ] || python3 -m venv "$DEPS_DIR/tools-venv" >&2
        echo "$DEPS_DIR/tools-venv/bin/python"
    fi
}

# OpenVINO is in requirements-test.txt; here it is added to an existing environment that lacks it.
install_openvino() {
    local python
    if [ -n "${VIRTUAL_ENV:-}" ]; then python="$VIRTUAL_ENV/bin/python"
    elif [ -x .venv/bin/python ]; then python="$PWD/.venv/bin/python"
    else
        echo "no virtual environment yet: openvino comes with requirements-test.txt (or pip install openvino)"
        return
    fi
    if "$python" -c "import openvino" >/dev/null 2>&1; then
        echo "openvino present in $python"
        return
    fi
    echo "installing openvino into $python"
    "$python" -m pip install -q openvino
}

fetch_mindspore_lite() {
    if [ -f "$MS_LITE_DIR/include/api/model.h" ] && [ -d "$MS_LITE_DIR/lib" ]; then
        echo "MindSpore C++ API present in $MS_LITE_DIR"
        return
    fi
    local python wheel_dir
    python=$(python_cmd)
    wheel_dir="$DEPS_DIR/wheels"
    mkdir -p "$wheel_dir"
    if ! ls "$wheel_dir"/mindspore_lite-"$MS_LITE_VERSION"-*.whl >/dev/null 2>&1; then
        echo "downloading mindspore-lite==$MS_LITE_VERSION (about 170 MB, once)"
        "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.7 \
            --platform manylinux2014_x86_64 -d "$wheel_dir" "mindspore-lite==$MS_LITE_VERSION"
    fi
    local wheel
    wheel=$(ls "$wheel_dir"/mindspore_lite-"$MS_LITE_VERSION"-*.whl | head -n 1)
    scratch=$(mktemp -d "$DEPS_DIR/.unpack.XXXXXX")
    trap 'rm -rf "$scratch"' EXIT
    "$python" -m zipfile -e "$wheel" "$scratch"
    mkdir -p "$scratch/out"
    cp -r "$scratch/mindspore_lite/include" "$scratch/mindspore_lite/lib" "$scratch/out/"
    rm -rf "$MS_LITE_DIR"
    mv "$scratch/out" "$MS_LITE_DIR"
    echo "MindSpore C++ API unpacked into $MS_LITE_DIR"
}

install_apt_packages
install_openvino
[ "$want_mindspore" -eq 1 ] && fetch_mindspore_lite
echo "inference build dependencies ready"
