"""Shared fixtures: generated data in the real on-disk formats and entry scripts run as subprocesses."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "cifar10_config_cpu.yaml"
IMAGENET_CONFIG = REPO / "imagenet_config.yaml"
# CPU config at CIFAR's own 32x32 size and a small batch, so that every run takes seconds.
SMALL_CIFAR = [f"--config_path={CPU_CONFIG}", "--image_height=32", "--image_width=32", "--batch_size=16",
               "--log_interval=5"]

sys.path.insert(0, str(REPO))


def script_env(**extra: str) -> dict[str, str]:
    """The environment for entry scripts: this interpreter's bin first on PATH (msrun starts ``python``)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_script(script: str, *args: str, cwd: Path, timeout: float = 900, env: dict | None = None,
               ) -> subprocess.CompletedProcess:
    """Run ``python <repo>/<script> args`` (or a shell script with ``bash``) and capture its output."""
    path = REPO / script
    command = ["bash", str(path)] if script.endswith(".sh") else [sys.executable, str(path)]
    return subprocess.run(command + list(args), cwd=cwd, env=env or script_env(), capture_output=True,
                          text=True, timeout=timeout)


def build_kernel(name: str, cache: Path) -> Path:
    """src/cpu_kernels/kernels/<name>.cc built from source into the empty ``cache``, as a first run on a new machine
    builds it. Skips the test without a C++ compiler, unless REQUIRE_INFER_DEPS=1 (then it fails)."""
    from src.cpu_kernels import build as compiled_kernels

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        reason = f"no C++ compiler (g++ or $CXX): the compiled {name} kernel cannot be built"
        if os.environ.get("REQUIRE_INFER_DEPS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOOGLENET_KERNEL_CACHE", str(cache))
        compiled_kernels.kernel_library.cache_clear()
        path = compiled_kernels.kernel_library(name)
    compiled_kernels.kernel_library.cache_clear()
    assert path is not None and path.parent == cache and path.is_file()
    return path


@pytest.fixture
def kernel_cache(library, monkeypatch):
    """The test module's ``library`` fixture (a kernel built once per module) is what the factories
    find: its cache folder in ``$GOOGLENET_KERNEL_CACHE``, the lookup cache cleared before and after."""
    from src.cpu_kernels import build as compiled_kernels

    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(library.parent))
    compiled_kernels.kernel_library.cache_clear()
    yield library
    compiled_kernels.kernel_library.cache_clear()


def create_with_compiler(create, compiler: str, cache: Path, monkeypatch, caplog):
    """``create()`` (a factory asked for a compiled kernel) with ``$CXX`` and the kernel cache set,
    nothing built before; its warnings land in ``caplog``."""
    from src.cpu_kernels import build as compiled_kernels

    monkeypatch.setenv("CXX", compiler)
    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(cache))
    compiled_kernels.kernel_library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="googlenet"):
            return create()
    finally:
        compiled_kernels.kernel_library.cache_clear()


def kernel_model(num_classes: int, max_pool: bool = False, conv: bool = False, **kwargs):
    """``create_model(num_classes, **kwargs)`` with the CPU layer's kernel forms of the max pools and/or
    the convolution blocks put in (where the kernels build)."""
    from src.cpu_kernels.blocks import substitute_kernels
    from src.googlenet import create_model

    net = create_model(num_classes, **kwargs)
    substitute_kernels(net, max_pool=max_pool, conv=conv)
    return net


def kernel_block(*args):
    """``Conv2dBlock(*args)`` in its kernel form (KernelConv2dBlock), the conv kernel built."""
    from src.cpu_kernels.blocks import KernelConv2dBlock
    from src.cpu_kernels.build import kernel_library
    from src.googlenet import Conv2dBlock

    library = kernel_library("conv")
    assert library is not None
    return KernelConv2dBlock(Conv2dBlock(*args), library, library)


def assert_user_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """A user mistake: the given exit code, one ``error:`` line naming the problem, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A learnable 10-class dataset in the CIFAR-10 binary layout: 5 x 96 training and 80 test records."""
    from src.demo_data import write_cifar10_layout

    return write_cifar10_layout(tmp_path_factory.mktemp("data"), num_train=480, num_test=80, seed=3)


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    """A JPEG class-folder tree (ImageNet layout): 4 classes, train/ and val/."""
    from src.demo_data import write_image_folder

    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(root / "train", num_classes=4, per_class=12, size=48, seed=1)
    write_image_folder(root / "val", num_classes=4, per_class=5, size=48, seed=2)
    return root


@dataclass
class TrainedRun:
    workdir: Path
    checkpoint: Path
    stdout: str
    data_dir: Path


@pytest.fixture(scope="session")
def trained_cifar(tmp_path_factory, cifar_dir) -> TrainedRun:
    """train.py run once on the synthetic CIFAR data (3 epochs at 32x32); later tests reuse its checkpoint."""
    workdir = tmp_path_factory.mktemp("train")
    result = run_script("train.py", *SMALL_CIFAR, f"--train_data_path={cifar_dir}", "--epoch_size=3",
                        "--lr_init=0.01", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = workdir / "ckpt" / "train_googlenet_cifar10-3_30.ckpt"
    assert checkpoint.is_file(), sorted(p.name for p in (workdir / "ckpt").iterdir())
    return TrainedRun(workdir=workdir, checkpoint=checkpoint, stdout=result.stdout, data_dir=cifar_dir)
