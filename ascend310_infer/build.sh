#!/usr/bin/env bash
# Build the offline inference app into ascend310_infer/out/<backend>/main.
#   bash build.sh [mindspore|openvino|auto]     (or INFER_BACKEND=...; default auto)
#   bash build.sh --check [backend]              only check the build prerequisites (one error line if not)
# mindspore: MindIR on Ascend 310 with MindSpore's C++ API, found in MINDSPORE_PATH, else in the
#            installed `mindspore` / `mindspore_lite` Python package, else in ../.deps (see
#            scripts/install_infer_deps.sh). openvino: ONNX on CPU, from the installed `openvino` package.
# auto takes mindspore when its C++ API is found, else openvino.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CHECK_ONLY=0
if [ "${1:-}" = --check ]; then CHECK_ONLY=1; shift; fi
BACKEND=${1:-${INFER_BACKEND:-auto}}
PYTHON=${PYTHON:-python3}

fail() { echo "error: $*" >&2; exit 1; }

has_cpp_api() { [ -n "$1" ] && [ -f "$1/include/api/model.h" ] && [ -d "$1/lib" ]; }

find_mindspore() {
    local candidate
    if [ -n "${MINDSPORE_PATH:-}" ]; then
        has_cpp_api "$MINDSPORE_PATH" || fail "MINDSPORE_PATH=$MINDSPORE_PATH has no include/api/model.h and lib/"
        echo "$MINDSPORE_PATH"; return
    fi
    for package in mindspore mindspore_lite; do
        candidate=$("$PYTHON" -c "import os, $package; print(os.path.dirname($package.__file__))" 2>/dev/null || true)
        if has_cpp_api "$candidate"; then echo "$candidate"; return; fi
    done
    for candidate in "$HERE"/../.deps/mindspore-lite-*; do
        if has_cpp_api "$candidate"; then (cd "$candidate" && pwd); return; fi
    done
}

find_openvino() {
    "$PYTHON" -c "import openvino.utils as u; print(u.get_cmake_path())" 2>/dev/null || true
}

# The tools and headers CMakeLists.txt needs, named in one line rather than as a CMake error.
check_prerequisites() {
    local missing=() cxx
    command -v cmake >/dev/null || missing+=("cmake")
    command -v make >/dev/null || missing+=("make")
    cxx=${CXX:-$(command -v c++ || command -v g++ || true)}
    if [ -z "$cxx" ] || ! command -v "$cxx" >/dev/null; then
        missing+=("a C++17 compiler (${CXX:-g++})")
    else
        has_header() { echo "#include <$1>" | "$cxx" -x c++ -std=c++17 -fsyntax-only "${@:2}" - >/dev/null 2>&1; }
        has_header gflags/gflags.h || missing+=("gflags headers (libgflags-dev)")
        has_header opencv2/imgcodecs.hpp -I/usr/include/opencv4 -I/usr/local/include/opencv4 \
            || missing+=("OpenCV headers (libopencv-imgcodecs-dev, libopencv-imgproc-dev)")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        local list
        list=$(printf '%s, ' "${missing[@]}")
        fail "cannot build the inference app, missing: ${list%, }; install them with: bash scripts/install_infer_deps.sh"
    fi
}
check_prerequisites

case "$BACKEND" in
    auto)
        if [ -n "$(find_mindspore)" ]; then BACKEND=mindspore
        elif [ -n "$(find_openvino)" ]; then BACKEND=openvino
        else fail "neither MindSpore's C++ API nor OpenVINO found; set MINDSPORE_PATH, or pip install openvino," \
                  "or run scripts/install_infer_deps.sh"
        fi ;;
    mindspore|openvino) ;;
    *) fail "backend '$BACKEND' is not supported; expected mindspore, openvino or auto" ;;
esac

CMAKE_ARGS=(-DINFER_BACKEND="$BACKEND" -DCMAKE_BUILD_TYPE=Release)
if [ "$BACKEND" = mindspore ]; then
    MS_PATH=$(find_mindspore)
    [ -n "$MS_PATH" ] || fail "MindSpore's C++ API (include/api/model.h + lib/) not found: set MINDSPORE_PATH," \
        "install MindSpore for Ascend, or run scripts/install_infer_deps.sh"
    CMAKE_ARGS+=(-DMINDSPORE_PATH="$MS_PATH")
    [ "$CHECK_ONLY" = 1 ] || echo "backend mindspore: $MS_PATH"
else
    OV_CMAKE=$(find_openvino)
    [ -n "$OV_CMAKE" ] || fail "OpenVINO not found in $("$PYTHON" -c 'import sys; print(sys.executable)' 2>/dev/null \
        || echo "$PYTHON"); pip install openvino (or run scripts/install_infer_deps.sh)"
    CMAKE_ARGS+=(-DOpenVINO_DIR="$OV_CMAKE")
    [ "$CHECK_ONLY" = 1 ] || echo "backend openvino: $OV_CMAKE"
fi

[ "$CHECK_ONLY" = 0 ] || exit 0

BUILD_DIR="$HERE/build/$BACKEND"
OUT_DIR="$HERE/out/$BACKEND"
mkdir -p "$BUILD_DIR" "$OUT_DIR"
# One build at a time per backend: concurrent runs of the chain share this folder.
exec 9>"$BUILD_DIR/.lock"
flock 9
cmake -S "$HERE" -B "$BUILD_DIR" "${CMAKE_ARGS[@]}" >"$BUILD_DIR/cmake.log" 2>&1 \
    || { cat "$BUILD_DIR/cmake.log" >&2; fail "cmake configuration failed (log above)"; }
cmake --build "$BUILD_DIR" -j "$(nproc)" >"$BUILD_DIR/build.log" 2>&1 \
    || { cat "$BUILD_DIR/build.log" >&2; fail "compilation failed (log above)"; }
cp "$BUILD_DIR/main" "$OUT_DIR/main.tmp" && mv "$OUT_DIR/main.tmp" "$OUT_DIR/main"
echo "built $OUT_DIR/main"
