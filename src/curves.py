"""Loss, accuracy and learning-rate curves of a training run, drawn from its metrics log.

    python -m src.curves ckpt/train_googlenet_cifar10-metrics.jsonl [--output curves.png]

matplotlib is in requirements.txt; where it is missing, training only warns, and this command stops.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from src.atomic_io import atomic_output
from src.errors import UserError, run_main
from src.logger import logger
from src.metrics_log import read_metrics


def _series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r["kind"] == kind and r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def draw_curves(records: list[dict], output: str | Path, title: str = "") -> Path:
    """Write a PNG with three panels: loss, validation accuracy and learning rate over the steps.

    Raises ImportError when matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    loss_ax.plot(*_series(records, "train", "loss"), ".-", alpha=0.5, label="every log_interval steps")
    loss_ax.plot(*_series(records, "epoch", "loss"), "o-", label="epoch mean")
    loss_ax.set(title="training loss", xlabel="step")
    loss_ax.legend()

    val_keys = sorted({k for r in records if r["kind"] == "eval" for k in r if k.startswith("val_")})
    for key in val_keys:
        acc_ax.plot(*_series(records, "eval", key), "o-", label=key)
    if val_keys:
        acc_ax.legend()
    else:
        acc_ax.text(0.5, 0.5, "no evaluation during training\n(eval_interval=0)", ha="center", va="center",
                    transform=acc_ax.transAxes)
    acc_ax.set(title="validation accuracy", xlabel="step")

    steps, rates = _series(records, "train", "lr")
    lr_ax.plot(steps, rates, ".-")
    lr_ax.set(title="learning rate", xlabel="step")
    if rates and min(rates) > 0:
        lr_ax.set_yscale("log")
    for axis in (loss_ax, acc_ax, lr_ax):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    output = Path(output)
    with atomic_output(output) as partial:
        figure.savefig(partial, dpi=90)
    plt.close(figure)
    return output


def draw_after_training(metrics_path: Path, output: Path, title: str = "") -> Path | None:
    """Draw the curves at the end of training; without matplotlib only say so."""
    try:
        path = draw_curves(read_metrics(metrics_path), output, title=title)
    except ImportError:
        logger.warning("matplotlib is not installed: no curves drawn (pip install matplotlib, then "
                       "python -m src.curves %s)", metrics_path)
        return None
    logger.info("curves: %s", path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw loss / accuracy / LR curves from a metrics log.")
    parser.add_argument("metrics_log", help="<prefix>-metrics.jsonl written by train.py")
    parser.add_argument("--output", default="", help="PNG to write (default: <log name>-curves.png beside it)")
    args = parser.parse_args(argv)
    log = Path(args.metrics_log)
    if not log.is_file():
        raise UserError(f"metrics log {log} does not exist; expected a <prefix>-metrics.jsonl written by train.py")
    records = read_metrics(log)
    if not records:
        raise UserError(f"metrics log {log} holds no records")
    stem = log.name.removesuffix(".jsonl").removesuffix("-metrics")
    output = Path(args.output) if args.output else log.with_name(f"{stem}-curves.png")
    try:
        path = draw_curves(records, output, title=stem)
    except ImportError:
        raise UserError("matplotlib is needed to draw curves; install it with: pip install matplotlib") from None
    print(f"curves: {path}", flush=True)


if __name__ == "__main__":
    run_main(main)
