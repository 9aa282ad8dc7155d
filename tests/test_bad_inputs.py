"""Every entry point answers bad input with one clear line: a table of cases, each a subprocess run.

Each case runs a real entry script (or shell launcher, or the compiled inference app) in its own
empty working folder and checks: the exit code; exactly one ``error:`` line on stderr that holds
the given fragments (the thing at fault, its value, what is expected); no Python traceback; and
no output file left behind: the working folder holds nothing afterwards but the bad inputs the
case wrote into it. docs/RELIABILITY.md, section Troubleshooting, lists the same cases with their fixes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CPU_CONFIG, IMAGENET_CONFIG, REPO, SMALL_CIFAR, run_script, script_env

INFER_APP = REPO / "ascend310_infer" / "out" / "openvino" / "main"
SMALL_IMAGENET = [f"--config_path={IMAGENET_CONFIG}", "--device_target=CPU", "--amp_level=O0", "--num_classes=4",
                  "--image_height=32", "--image_width=32", "--batch_size=4", "--num_parallel_workers=1"]
UNCLOSED_YAML_LIST = b"batch_size: [1, 2\n"
BAD_LABEL_LINES = b"a.JPEG 3\nb.JPEG cat\n"
THREE_CLASS_NAMES = b"cat\ndog\nbird\n"


@dataclass
class Inputs:
    """What a case can refer to: its own working folder and good inputs shared by all cases."""

    work: Path
    cifar: Path
    images: Path
    checkpoint: Path
    onnx: Path | None = None

    def file(self, name: str, content: bytes = b"") -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cifar_copy(self, name: str, **replace: bytes) -> Path:
        """A copy of the CIFAR folder with some files replaced (empty content: the file is removed)."""
        folder = self.work / name
        shutil.copytree(self.cifar, folder)
        for file_name, content in replace.items():
            target = folder / f"{file_name}.bin"
            target.unlink()
            if content:
                target.write_bytes(content)
        return folder

    def image(self) -> Path:
        """A real JPEG (from the generated class-folder tree)."""
        return sorted((self.images / "val").rglob("*.JPEG"))[0]

    def truncated_checkpoint(self, name: str = "truncated.ckpt") -> Path:
        data = self.checkpoint.read_bytes()
        return self.file(name, data[: len(data) // 3])


@dataclass(frozen=True)
class Case:
    id: str
    command: str                        # an entry script of the repository, or "infer_app"
    args: Callable[[Inputs], list[str]]
    code: int
    fragments: tuple[str, ...]          # all must appear in the error line; "{work}" is the case folder
    needs: tuple[str, ...] = field(default_factory=tuple)   # "onnx", "infer_app"
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables of the run


def _cifar_train(*extra: str) -> Callable[[Inputs], list[str]]:
    return lambda i: [*SMALL_CIFAR, f"--train_data_path={i.cifar}", "--epoch_size=1", *extra]


CASES = [
    # ---- train.py: configs and flags
    Case("train-yaml-syntax", "train.py",
         lambda i: [f"--config_path={i.file('bad.yaml', UNCLOSED_YAML_LIST)}"],
         2, ("config file", "bad.yaml", "line")),
    Case("train-wrong-type", "train.py", _cifar_train("--epoch_size=ten"),
         2, ("--epoch_size='ten'", "wrong type", "expected an integer")),
    Case("train-unknown-dataset", "train.py", _cifar_train("--dataset_name=mnist"),
         2, ("dataset_name=mnist", "expected one of: cifar10, imagenet")),
    Case("train-device-missing", "train.py", _cifar_train("--device_target=GPU"),
         1, ("device_target=GPU", "not available", "CPU")),
    # ---- train.py: data folders and files
    Case("train-data-missing", "train.py", lambda i: [*SMALL_CIFAR, f"--train_data_path={i.work}/nowhere"],
         1, ("{work}/nowhere", "does not exist", "cifar-10-batches-bin")),
    Case("train-no-batches", "train.py", lambda i: [*SMALL_CIFAR, f"--train_data_path={i.folder('empty')}"],
         1, ("no data_batch_*.bin", "{work}/empty")),
    Case("train-truncated-cifar", "train.py",
         lambda i: [*SMALL_CIFAR, f"--train_data_path={i.cifar_copy('cut', data_batch_2=b'x' * 5000)}"],
         1, ("data_batch_2.bin", "5000 bytes", "3073-byte")),
    Case("train-labels-beyond-classes", "train.py", _cifar_train("--num_classes=5"),
         1, ("label 9", "num_classes=5", "0..4")),
    Case("train-batch-larger-than-data", "train.py", _cifar_train("--batch_size=100000"),
         1, ("fewer images than one batch", "batch_size=100000")),
    Case("train-imagenet-flat-folder", "train.py",
         lambda i: [*SMALL_IMAGENET, f"--train_data_path={i.file('flat/a.JPEG', b'x').parent}", "--epoch_size=1"],
         1, ("{work}/flat", "no class sub-folders", "<class>/<image>.JPEG")),
    Case("train-pretrained-missing", "train.py", _cifar_train("--pre_trained=/nonexistent/g.ckpt"),
         1, ("/nonexistent/g.ckpt", "does not exist", ".ckpt")),
    Case("train-pretrained-truncated", "train.py",
         lambda i: _cifar_train(f"--pre_trained={i.truncated_checkpoint()}")(i),
         1, ("truncated.ckpt", "cannot be read", "complete MindSpore .ckpt")),
    Case("train-save-dir-is-a-file", "train.py",
         lambda i: _cifar_train(f"--ckpt_save_dir={i.file('taken')}")(i),
         1, ("ckpt_save_dir", "{work}/taken", "folder")),
    # ---- eval.py
    Case("eval-checkpoint-missing", "eval.py",
         lambda i: [*SMALL_CIFAR, f"--val_data_path={i.cifar}", f"--checkpoint_path={i.work}/none.ckpt"],
         1, ("none.ckpt", "does not exist")),
    Case("eval-checkpoint-empty", "eval.py",
         lambda i: [*SMALL_CIFAR, f"--val_data_path={i.cifar}", f"--checkpoint_path={i.file('empty.ckpt')}"],
         1, ("empty.ckpt", "cannot be read", "0 bytes")),
    Case("eval-checkpoint-other-network", "eval.py",
         lambda i: [*SMALL_CIFAR, f"--val_data_path={i.cifar}", f"--checkpoint_path={_other_network_checkpoint(i)}"],
         1, ("other_net.ckpt", "has no parameter", "this GoogleNet")),
    Case("eval-no-test-batch", "eval.py",
         lambda i: [*SMALL_CIFAR, f"--val_data_path={i.folder('empty')}", f"--checkpoint_path={i.checkpoint}"],
         1, ("no test_batch.bin", "{work}/empty")),
    # ---- export.py
    Case("export-unknown-format", "export.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--ckpt_file={i.checkpoint}", "--file_format=PDF"],
         2, ("file_format=PDF", "expected one of: MINDIR, ONNX, AIR")),
    Case("export-device-missing", "export.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--ckpt_file={i.checkpoint}", "--device_target=Ascend"],
         1, ("device_target=Ascend", "not available", "CPU")),
    Case("export-checkpoint-truncated", "export.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--ckpt_file={i.truncated_checkpoint()}",
                    f"--file_name={i.work}/googlenet"],
         1, ("truncated.ckpt", "cannot be read")),
    Case("export-checkpoint-other-num-classes", "export.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--ckpt_file={i.checkpoint}", "--num_classes=4"],
         1, ("classifier.weight", "(10, 1024)", "(4, 1024)", "num_classes")),
    Case("export-batch-zero", "export.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--ckpt_file={i.checkpoint}", "--export_batch_size=0"],
         2, ("export_batch_size=0", "expected a value > 0")),
    Case("export-file-name-under-a-file", "export.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--ckpt_file={i.checkpoint}", "--image_height=32",
                    "--image_width=32", f"--file_name={i.file('taken')}/googlenet"],
         1, ("{work}/taken", "not a folder")),
    # ---- preprocess.py
    Case("preprocess-flag-of-the-earlier-interface", "preprocess.py", lambda i: ["--dataset=cifar10"],
         2, ("unknown option '--dataset=cifar10'", "dataset_name")),
    Case("preprocess-data-missing", "preprocess.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--val_data_path={i.work}/nowhere", "--output_path=out"],
         1, ("{work}/nowhere", "does not exist")),
    Case("preprocess-truncated-cifar", "preprocess.py",
         lambda i: [f"--config_path={CPU_CONFIG}", f"--val_data_path={i.cifar_copy('cut', test_batch=b'x' * 100)}",
                    "--output_path=out"],
         1, ("test_batch.bin", "100 bytes", "3073-byte")),
    Case("preprocess-imagenet-no-classes", "preprocess.py",
         lambda i: [f"--config_path={IMAGENET_CONFIG}", f"--val_data_path={i.folder('flat')}", "--output_path=out"],
         1, ("{work}/flat", "no class sub-folders")),
    Case("preprocess-output-under-a-file", "preprocess.py",
         lambda i: [f"--config_path={IMAGENET_CONFIG}", f"--val_data_path={i.images}/val",
                    f"--output_path={i.file('taken')}/out"],
         1, ("output_path: {work}/taken/out is not a folder", "expected a folder")),
    # ---- postprocess.py
    Case("postprocess-labels-missing", "postprocess.py",
         lambda i: [f"--result_path={i.folder('result_Files')}", f"--label_file={i.work}/01_label"],
         1, ("{work}/01_label", "does not exist", "preprocess.py")),
    Case("postprocess-result-wrong-size", "postprocess.py",
         lambda i: [f"--result_path={_results(i, logits_bytes=36)}", f"--label_file={i.work}/labels",
                    "--num_classes=10"],
         1, ("cifar10_00000_0.bin", "36 bytes", "2 x 10 float32 logits")),
    Case("postprocess-result-missing", "postprocess.py",
         lambda i: [f"--result_path={_results(i, logits_bytes=None)}", f"--label_file={i.work}/labels"],
         1, ("cifar10_00000_0.bin", "missing")),
    Case("postprocess-imagenet-bad-label-line", "postprocess.py",
         lambda i: ["--dataset=imagenet", f"--result_path={i.folder('result_Files')}",
                    f"--label_file={i.file('labels.txt', BAD_LABEL_LINES)}"],
         1, ("labels.txt line 2", "'b.JPEG cat'", "'<image name> <class index>'")),
    # ---- predict.py
    Case("predict-image-missing", "predict.py",
         lambda i: [*SMALL_CIFAR, f"--predict_model={i.checkpoint}", f"--predict_images={i.work}/cat.jpg"],
         1, ("predict_images", "{work}/cat.jpg", "does not exist", "image file or a folder")),
    Case("predict-not-an-image", "predict.py",
         lambda i: [*SMALL_CIFAR, f"--predict_model={i.checkpoint}",
                    f"--predict_images={i.file('notes.jpg', b'shopping list')}"],
         1, ("notes.jpg", "cannot be decoded as an image", "JPEG, PNG")),
    Case("predict-unknown-model-type", "predict.py",
         lambda i: [*SMALL_CIFAR, f"--predict_model={i.file('model.onnx', b'x')}", f"--predict_images={i.image()}"],
         1, ("model.onnx", "unknown model type '.onnx'", "expected .ckpt or .mindir")),
    Case("predict-class-names-count", "predict.py",
         lambda i: [*SMALL_CIFAR, f"--predict_model={i.checkpoint}", f"--predict_images={i.image()}",
                    f"--class_names_file={i.file('names.txt', THREE_CLASS_NAMES)}"],
         1, ("names.txt", "has 3 names", "10 classes")),
    Case("train-script-unknown-dataset", "scripts/run_train_cpu.sh", lambda i: ["mnist"],
         2, ("dataset 'mnist'", "expected cifar10 or imagenet")),
    Case("distribute-script-zero-workers", "scripts/run_distribute_train_cpu.sh", lambda i: ["0"],
         2, ("WORKER_NUM=0", "1..1024")),
    Case("eval-script-checkpoint-missing", "scripts/run_eval_cpu.sh", lambda i: [f"{i.work}/none.ckpt"],
         3, ("checkpoint", "{work}/none.ckpt", "does not exist")),
    # ---- scripts/run_infer_310.sh
    Case("infer-script-too-few-arguments", "scripts/run_infer_310.sh", lambda i: ["model.onnx", "cifar10"],
         1, ("expected 3 to 5 arguments", "usage:")),
    Case("infer-script-unknown-dataset", "scripts/run_infer_310.sh",
         lambda i: [str(i.file("model.onnx", b"x")), "mnist", str(i.cifar)],
         1, ("DATASET 'mnist'", "cifar10 or imagenet")),
    Case("infer-script-model-missing", "scripts/run_infer_310.sh",
         lambda i: [f"{i.work}/none.mindir", "cifar10", str(i.cifar)],
         1, ("{work}/none.mindir", "does not exist", "export.py")),
    Case("infer-script-no-compiler", "scripts/run_infer_310.sh",
         lambda i: [str(i.file("model.onnx", b"x")), "cifar10", str(i.cifar)],
         1, ("cannot build the inference app, missing: a C++17 compiler (/nonexistent/c++)",
             "bash scripts/install_infer_deps.sh"), env=(("CXX", "/nonexistent/c++"),)),
    Case("infer-script-bad-device-id", "scripts/run_infer_310.sh",
         lambda i: [str(i.file("model.onnx", b"x")), "cifar10", str(i.cifar), "-", "one"],
         1, ("DEVICE_ID 'one'", "device number")),
    # ---- the compiled inference app (ascend310_infer, OpenVINO backend on this CPU)
    Case("infer-app-no-model-flag", "infer_app", lambda i: [f"--dataset_path={i.folder('in')}"],
         1, ("--model_path", "required"), needs=("infer_app",)),
    Case("infer-app-unknown-dataset", "infer_app",
         lambda i: [f"--model_path={i.file('m.onnx', b'x')}", "--dataset=mnist", f"--dataset_path={i.folder('in')}"],
         1, ("--dataset=mnist", "expected cifar10 or imagenet"), needs=("infer_app",)),
    Case("infer-app-model-missing", "infer_app",
         lambda i: [f"--model_path={i.work}/none.onnx", f"--dataset_path={i.folder('in')}"],
         1, ("{work}/none.onnx", "no such file"), needs=("infer_app",)),
    Case("infer-app-input-wrong-size", "infer_app",
         lambda i: [f"--model_path={i.onnx}", f"--dataset_path={i.file('in/cifar10_00000.bin', bytes(40)).parent}",
                    f"--result_path={i.work}/result_Files", f"--time_path={i.work}/time_Result"],
         1, ("cifar10_00000.bin", "10 float32 values", "expected 1 to 1 images of 3072 values"),
         needs=("infer_app", "onnx")),
]


def _other_network_checkpoint(inputs: Inputs) -> Path:
    """A valid checkpoint of a different network (one Dense layer)."""
    import mindspore as ms
    import mindspore.nn as nn

    path = inputs.work / "other_net.ckpt"
    ms.save_checkpoint(nn.Dense(4, 2), str(path))
    return path


def _results(inputs: Inputs, logits_bytes: int | None) -> Path:
    """preprocess.py-style labels (one batch of 2 images) and, unless None, a result file of that size."""
    inputs.file("labels/cifar10_00000.bin", np.array([1, 2], dtype=np.int32).tobytes())
    results = inputs.folder("result_Files")
    if logits_bytes is not None:
        inputs.file("result_Files/cifar10_00000_0.bin", bytes(logits_bytes))
    return results


def _present(case: Case) -> str | None:
    """Why the case cannot run (its entry point is not in the repository), or None."""
    if case.command != "infer_app" and not (REPO / case.command).is_file():
        return f"{case.command} is not in the repository"
    return None


@pytest.fixture(scope="module")
def infer_app() -> Path:
    """The compiled inference app; built with its own build script when missing."""
    if not INFER_APP.is_file():
        build = REPO / "ascend310_infer" / "build.sh"
        if not build.is_file():
            pytest.skip("ascend310_infer/build.sh is not in the repository")
        result = subprocess.run(["bash", str(build), "openvino"], capture_output=True, text=True,
                                env=script_env(PYTHON=os.environ.get("PYTHON", "python")), timeout=900)
        if result.returncode != 0:
            pytest.skip(f"the inference app cannot be built here: {result.stderr.strip().splitlines()[-1:]}")
    return INFER_APP


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, trained_cifar) -> Path:
    """The trained checkpoint exported to ONNX for a 1 x 3 x 32 x 32 input."""
    dest = tmp_path_factory.mktemp("onnx")
    result = run_script("export.py", *SMALL_CIFAR, f"--ckpt_file={trained_cifar.checkpoint}", "--file_format=ONNX",
                        f"--file_name={dest}/googlenet", cwd=dest)
    assert result.returncode == 0, result.stderr[-3000:]
    return dest / "googlenet.onnx"


def _files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@dataclass
class Run:
    """One case's run: its working folder, what was in it before, and the finished process."""

    work: Path
    before: set[str]
    result: subprocess.CompletedProcess | None = None
    skip: str | None = None


# Each run is mostly interpreter and MindSpore start-up, so a few run side by side.
PARALLEL_RUNS = 3
FIXTURE_OF_NEED = {"infer_app": "infer_app", "onnx": "onnx_model"}


def _execute(case: Case, run: Run, args: list[str]) -> Run:
    if case.command == "infer_app":
        run.result = subprocess.run([str(INFER_APP), *args], cwd=run.work, capture_output=True, text=True,
                                    timeout=300)
    else:
        run.result = run_script(case.command, *args, cwd=run.work, timeout=600, env=script_env(**dict(case.env)))
    return run


@pytest.fixture(scope="module")
def corpus_runs(request, tmp_path_factory, cifar_dir, image_tree, trained_cifar) -> dict[str, Run]:
    """The selected cases, each run once in its own folder (inputs prepared here, runs in parallel)."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", "") == "test_bad_input_is_one_clear_line"}
    fixtures: dict[str, object] = {}
    unavailable: dict[str, str] = {}
    for need in {need for case in CASES if case.id in selected for need in case.needs}:
        try:
            fixtures[need] = request.getfixturevalue(FIXTURE_OF_NEED[need])
        except pytest.skip.Exception as skip:
            unavailable[need] = str(skip)
    runs: dict[str, Run] = {}
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        pending = []
        for case in (case for case in CASES if case.id in selected):
            work = tmp_path_factory.mktemp(case.id) / "work"
            work.mkdir()
            reason = _present(case) or next((unavailable[need] for need in case.needs if need in unavailable), None)
            if reason:
                runs[case.id] = Run(work, set(), skip=reason)
                continue
            inputs = Inputs(work=work, cifar=cifar_dir, images=image_tree, checkpoint=trained_cifar.checkpoint,
                            onnx=fixtures.get("onnx"))
            args = case.args(inputs)
            run = runs[case.id] = Run(work, _files_under(work))
            pending.append(pool.submit(_execute, case, run, args))
        for future in pending:
            future.result()
    return runs


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_clear_line(case: Case, corpus_runs):
    run = corpus_runs[case.id]
    if run.skip:
        pytest.skip(run.skip)
    result = run.result
    output = result.stdout + result.stderr
    assert result.returncode == case.code, (result.returncode, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in case.fragments:
        assert fragment.replace("{work}", str(run.work)) in errors[0], errors[0]
    left_behind = _files_under(run.work) - run.before
    assert not left_behind, f"partial outputs left behind: {sorted(left_behind)}"


def test_corpus_covers_every_entry_point():
    """At least 25 cases, and every entry point of the repository has some."""
    commands = {case.command for case in CASES}
    # developer tools and the hub entry (a library call, not a command), tested on their own
    tools = {"benchmark.py", "learning_ab.py", "recipes_ab.py", "setup.py", "mindspore_hub_conf.py"}
    entry_points = {path.name for path in REPO.glob("*.py") if path.name not in tools}
    scripts = {f"scripts/{path.name}" for path in (REPO / "scripts").glob("run_*.sh")}
    assert len(CASES) >= 25
    assert not entry_points - commands, f"entry scripts without bad-input cases: {entry_points - commands}"
    assert scripts - commands != scripts, "no shell launcher has a bad-input case"


def test_the_troubleshooting_table_lists_every_case():
    parts = (REPO / "docs" / "RELIABILITY.md").read_text(encoding="utf-8").split("### Troubleshooting", 1)
    assert len(parts) == 2, "docs/RELIABILITY.md has no section '### Troubleshooting'"
    missing = [case.id for case in CASES if f"| `{case.id}` |" not in parts[1]]
    assert not missing, f"docs/RELIABILITY.md, section Troubleshooting, lacks: {missing}"
