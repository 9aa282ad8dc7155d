"""Learning A/B of the CPU training paths on real data: the compiled kernels against MindSpore's operators.

    python learning_ab.py --data=digits --seeds=1,2,3 --epoch_size=4 --repeat
    python learning_ab.py --data=fashion-mnist --seeds=1,2,3 --epoch_size=1
    python learning_ab.py --data=/data/cifar-10-batches-bin --seeds=1,2,3 --epoch_size=1

For every seed, trains with the real CLI (train.py, the CPU config at 32x32 unless told otherwise) once
with the compiled kernels (the config's defaults) and once with them off, evaluates each final
checkpoint with eval.py, and prints per run the mean training loss in each quarter of the run and the
test accuracy; then whether the kernel runs lie within the spread of the stock runs. ``--repeat``
trains the first seed of each path a second time and reports where (if anywhere) the per-step losses
of the two runs part. Every change to what a training step runs is shown with this table.
``--data`` is a folder of CIFAR-10 binary files (data_batch_*.bin for training, test_batch.bin for
eval) or the name of a real dataset that a package ships, written in that layout into the output folder
first: ``digits`` (scikit-learn's 1,797 handwritten digits, 8x8 scaled to 32x32; 1,500 train, 297 test)
or ``fashion-mnist`` (Debian's dataset-fashion-mnist: 60,000 + 10,000 photos, 28x28 padded to 32x32).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
KERNELS_OFF = ["--compiled_conv=False", "--compiled_max_pool=False", "--compiled_optimizer=False",
               "--fold_batchnorm=False", "--channels_last=False"]
PATHS = {"kernels": [], "stock": KERNELS_OFF}
ACCURACY = re.compile(r"^accuracy: \{'acc': ([0-9.eE+-]+)\}", re.MULTILINE)


Split = tuple[np.ndarray, np.ndarray]  # images (N, 32, 32) uint8, labels (N,)


def _write_cifar_layout(folder: Path, train: Split, test: Split) -> Path:
    """Grey 32x32 uint8 images and their labels as CIFAR-10 binary records (label byte, then the
    image repeated on three channels): train in data_batch_1..5.bin, test in test_batch.bin."""
    folder.mkdir(parents=True, exist_ok=True)

    def records(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        planes = np.repeat(images[:, None], 3, axis=1).reshape(len(labels), -1)
        return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1)

    for number, part in enumerate(np.array_split(records(*train), 5), 1):
        part.tofile(folder / f"data_batch_{number}.bin")
    records(*test).tofile(folder / "test_batch.bin")
    return folder


def write_digits(folder: Path, test_count: int = 297) -> Path:
    """scikit-learn's handwritten digits (8x8, values 0-16) at 32x32, shuffled once with a fixed seed;
    the first ``test_count`` images are the test set."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images.reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)
    images = images.repeat(4, axis=1).repeat(4, axis=2)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    return _write_cifar_layout(folder, (images[test_count:], labels[test_count:]),
                               (images[:test_count], labels[:test_count]))


def write_fashion_mnist(folder: Path, train_count: int | None = None, test_count: int | None = None) -> Path:
    """Fashion-MNIST from the Debian package (the first ``train_count`` / ``test_count`` images of each
    split when given), 28x28 padded with zeros to 32x32."""
    def read(kind: str, count: int | None) -> tuple[np.ndarray, np.ndarray]:
        with gzip.open(FASHION_MNIST / f"{kind}-images-idx3-ubyte.gz") as handle:
            images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_MNIST / f"{kind}-labels-idx1-ubyte.gz") as handle:
            labels = np.frombuffer(handle.read(), np.uint8, offset=8)
        return np.pad(images[:count], ((0, 0), (2, 2), (2, 2))), labels[:count]

    if not FASHION_MNIST.is_dir():
        raise FileNotFoundError(f"{FASHION_MNIST} not found: apt-get install dataset-fashion-mnist")
    return _write_cifar_layout(folder, read("train", train_count), read("t10k", test_count))


def dataset_folder(data: str, output: Path) -> Path:
    """The CIFAR-layout folder ``--data`` names, writing a packaged dataset there first."""
    if data == "digits":
        return write_digits(output / "digits")
    if data == "fashion-mnist":
        return write_fashion_mnist(output / "fashion-mnist")
    return Path(data)


@dataclass
class Run:
    """One training run and its evaluation."""

    path: str
    seed: int
    losses: list[float] = field(default_factory=list)  # every step's training loss
    accuracy: float = float("nan")

    def quarters(self) -> list[float]:
        """Mean training loss in each quarter of the run's steps."""
        n = len(self.losses)
        bounds = [round(n * q / 4) for q in range(5)]
        return [sum(self.losses[a:b]) / max(b - a, 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @property
    def final_loss(self) -> float:
        return self.quarters()[-1]


def _run(command: list[str], what: str, cwd: Path, timeout: float) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def train_and_evaluate(path: str, seed: int, data: Path, output: Path, common: list[str],
                       timeout: float = 7200, options: list[str] | None = None) -> Run:
    """Train one run of ``path`` (its flags: ``options``, by default those of PATHS) with ``seed`` into
    ``output``, evaluate its last checkpoint."""
    flags = [*common, *(PATHS[path] if options is None else options), f"--seed={seed}"]
    run_dir = output / f"{path}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, str(REPO / "train.py"), *flags, f"--train_data_path={data}", "--log_interval=1",
          f"--ckpt_save_dir={run_dir}"], f"train.py ({path}, seed {seed})", run_dir, timeout)
    run = Run(path, seed)
    metrics = sorted(run_dir.glob("*-metrics.jsonl"))[-1]
    for line in metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            run.losses.append(float(record["loss"]))
    checkpoint = max(run_dir.glob("*-*_*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    out = _run([sys.executable, str(REPO / "eval.py"), *flags, f"--val_data_path={data}",
                f"--checkpoint_path={checkpoint}"], f"eval.py ({path}, seed {seed})", run_dir, timeout)
    match = ACCURACY.search(out)
    if match is None:
        raise RuntimeError(f"eval.py ({path}, seed {seed}) printed no accuracy line")
    run.accuracy = float(match.group(1))
    return run


def first_difference(a: list[float], b: list[float]) -> int | None:
    """The 1-based step at which two loss curves first differ (None: the same at every step)."""
    for step, (x, y) in enumerate(zip(a, b, strict=True), 1):
        if x != y:
            return step
    return None


def within(value: float, reference: list[float], margin: float) -> bool:
    """Whether ``value`` lies in [min - margin, max + margin] of ``reference``."""
    return min(reference) - margin <= value <= max(reference) + margin


def spread_verdict(runs: list[Run], loss_margin: float = 0.0, accuracy_margin: float = 0.0) -> list[str]:
    """Problems of the kernel runs against the stock runs' spread (empty: none): the mean over seeds of
    the final-quarter loss and of the test accuracy must lie within the stock runs' range, widened by
    the margins."""
    kernels = [r for r in runs if r.path == "kernels"]
    stock = [r for r in runs if r.path == "stock"]
    problems = []
    for what, value, margin in (("final-quarter training loss", lambda r: r.final_loss, loss_margin),
                                ("test accuracy", lambda r: r.accuracy, accuracy_margin)):
        mean = sum(value(r) for r in kernels) / len(kernels)
        reference = [value(r) for r in stock]
        if not within(mean, reference, margin):
            problems.append(f"kernel runs' mean {what} {mean:.4f} lies outside the stock runs' "
                            f"[{min(reference):.4f}, {max(reference):.4f}] (margin {margin})")
    return problems


def table(runs: list[Run]) -> str:
    lines = ["| run | mean training loss per quarter of the run | final quarter | test accuracy |",
             "|---|---|---|---|"]
    for r in runs:
        quarters = " / ".join(f"{q:.3f}" for q in r.quarters())
        lines.append(f"| {r.path}, seed {r.seed} | {quarters} | {r.final_loss:.3f} | {100 * r.accuracy:.1f} % |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of CIFAR-10 binary files, or digits / fashion-mnist")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, one run per path each")
    parser.add_argument("--epoch_size", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--config_path", default=str(REPO / "cifar10_config_cpu.yaml"))
    parser.add_argument("--output_dir", default="learning_ab", help="checkpoints and logs of every run")
    parser.add_argument("--paths", default="kernels,stock", help="which paths to train (calibration: stock)")
    parser.add_argument("--repeat", action="store_true", help="train the first seed of each path twice")
    parser.add_argument("--extra", default="", help="more train.py/eval.py flags, space-separated")
    args = parser.parse_args()
    output = Path(args.output_dir).resolve()
    paths = [p for p in args.paths.split(",") if p]
    if not paths or any(p not in PATHS for p in paths):
        return _error(f"--paths {args.paths!r}: expected names from {sorted(PATHS)}", 2)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        data = dataset_folder(args.data, output)
    except ValueError:
        return _error(f"--seeds {args.seeds!r}: expected comma-separated integers", 2)
    except (FileNotFoundError, ImportError) as err:
        return _error(f"--data {args.data}: {err}", 2)
    if not data.is_dir():
        return _error(f"--data {data}: not a folder (expected CIFAR-10 binary files, or digits / fashion-mnist)", 2)
    common = [f"--config_path={args.config_path}", f"--image_height={args.image_size}",
              f"--image_width={args.image_size}", f"--epoch_size={args.epoch_size}", *args.extra.split()]
    try:
        return _compare(paths, seeds, data, output, common, args.repeat)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        return _error(str(err), 1)


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _compare(paths: list[str], seeds: list[int], data: Path, output: Path, common: list[str], repeat: bool) -> int:
    runs = []
    for seed in seeds:
        for path in paths:
            runs.append(train_and_evaluate(path, seed, data, output, common))
            print(table(runs[-1:]).splitlines()[-1], flush=True)
    print(table(runs))
    problems = []
    if len(paths) == len(PATHS):
        problems = spread_verdict(runs)
        print("kernels within the stock spread: " + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)))
    if repeat:
        for path in paths:
            again = train_and_evaluate(path, seeds[0], data, output / "repeat", common)
            first = next(r for r in runs if r.path == path and r.seed == seeds[0])
            step = first_difference(first.losses, again.losses)
            print(f"{path}, seed {seeds[0]} twice: " + (f"identical at all {len(again.losses)} steps" if step is None
                  else f"first different at step {step} of {len(again.losses)}"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
