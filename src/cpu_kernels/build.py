"""Building the C++ CPU kernels of src/cpu_kernels/kernels/ (loaded through ``ops.Custom(func_type="aot")``).

Each kernel is compiled with the system C++ compiler (g++ or ``$CXX``) on first use, once per
source version and machine, into ``$GOOGLENET_KERNEL_CACHE`` (default ``~/.cache/googlenet_kernels``).
``dnnl.cc`` is compiled against oneDNN's headers (PyPI's onednn-devel) and linked to MindSpore's own
``lib/libdnnl.so.3``. Where a kernel cannot be built (no compiler, no headers, a failing build) the
caller falls back, after one warning, to MindSpore's operators (for ``dnnl``: to the other kernels).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import mindspore.ops as ops
from mindspore.ops import signature

from src.logger import logger

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
# -fopenmp-simd: only the loops marked "omp simd" (vectorised sums), no OpenMP runtime.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC",
                 "-pthread"]


# What a kernel's failure to build leaves in its place (the warning says it).
FALLBACKS = {"dnnl": "the NCHW layout (the compiled_* kernels where they build, else MindSpore's operators)"}


def _onednn_flags() -> list[str] | str:
    """Compile and link flags for a kernel on MindSpore's own oneDNN, or why there are none."""
    import mindspore

    library = Path(mindspore.__file__).resolve().parent / "lib"
    if not (library / "libdnnl.so.3").is_file():
        return f"{library} has no libdnnl.so.3"
    include = Path(sysconfig.get_path("data")) / "include"
    if not (include / "oneapi" / "dnnl" / "dnnl.h").is_file():
        return f"no oneDNN headers in {include}: pip install onednn-devel==2025.3.0"
    return [f"-I{include}", f"-L{library}", "-l:libdnnl.so.3", f"-Wl,-rpath,{library}", "-ldl"]


def _machine_id() -> str:
    """What a -march=native build depends on: the architecture and the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


@functools.cache
def kernel_library(name: str) -> Path | None:
    """Path of the compiled library of src/cpu_kernels/kernels/<name>.cc, building it if needed; None when it
    cannot be built (the warning names what MindSpore operators are used instead)."""
    source_path = KERNEL_DIR / f"{name}.cc"
    fallback = FALLBACKS.get(name, "MindSpore's own CPU kernels")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        logger.warning("no C++ compiler (g++ or $CXX) found: %s uses %s", name, fallback)
        return None
    link_flags = _onednn_flags() if name == "dnnl" else []
    if isinstance(link_flags, str):
        logger.warning("cannot build the %s kernel (%s): it uses %s", name, link_flags, fallback)
        return None
    # the source and the headers it may include
    source = b"".join(path.read_bytes() for path in [source_path, *sorted(KERNEL_DIR.glob("*.h"))])
    digest = hashlib.sha256(source + " ".join([compiler, *COMPILE_FLAGS, *link_flags, _machine_id()]).encode()
                            ).hexdigest()[:16]
    cache = Path(os.environ.get("GOOGLENET_KERNEL_CACHE") or Path.home() / ".cache" / "googlenet_kernels")
    library = cache / f"{name}_{digest}.so"
    if library.is_file():
        return library
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            built = Path(scratch) / library.name
            subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(built), str(source_path), *link_flags],
                           check=True, capture_output=True, text=True, timeout=300)
            os.replace(built, library)  # atomic: concurrent ranks may build at the same time
        logger.info("compiled %s into %s", source_path.name, library)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        last_line = detail.strip().splitlines()[-1] if detail.strip() else str(err)
        logger.warning("could not compile %s (%s): %s uses %s", source_path, last_line, name, fallback)
        return None
    return library


def kernels_apply(config) -> bool:
    """Whether the compiled kernels can apply at all: on CPU, in float32 (amp_level O0)."""
    return config.device_target == "CPU" and config.amp_level == "O0"


def writes_inputs(op: ops.Custom, written: list[bool]) -> ops.Custom:
    """``op`` declared to MindSpore as writing its inputs where ``written`` says so (one flag per
    input), the way MindSpore's own in-place operations (Assign, ApplyMomentum) are: the memory side
    effect, and those inputs as references to be written. The graph then orders every read of those
    parameters around the call and hands the kernel the parameters' own memory. Returns ``op``."""
    op.add_prim_attr("side_effect_mem", True)
    op.__mindspore_signature__ = tuple(
        signature.make_sig(f"input{i}", signature.sig_rw.RW_WRITE if write else signature.sig_rw.RW_READ)
        for i, write in enumerate(written))
    return op
