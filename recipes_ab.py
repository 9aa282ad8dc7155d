"""Learning A/B of the training recipes: each recipe option on, against all of them off, with the same budget.

    python recipes_ab.py --data=digits --seeds=1,2,3 --epoch_size=6 \
        --extra="--lr_scheduler=cosine_annealing --T_max=6 --lr_init=0.05"
    python recipes_ab.py --data=/data/cifar-10-batches-bin --options=off,mixup,ema --epoch_size=2

For every seed and option, trains with the real CLI (train.py, the CPU config at 32x32 with the kernels
on) and evaluates the final checkpoint with eval.py (which takes the EMA weights when the run kept
them), then prints a markdown table of test accuracy per option and seed with the mean, and the
difference of each mean from ``off``. ``--data`` is as in learning_ab.py (digits, fashion-mnist or a
folder of CIFAR-10 binary files).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from learning_ab import Run, dataset_folder, train_and_evaluate

REPO = Path(__file__).resolve().parent
# One recipe option per row, the others at the shipped configs' off values.
OPTIONS = {
    "off": [],
    "randaugment": ["--auto_augment=randaugment-m9"],
    "autoaugment": ["--auto_augment=autoaugment-cifar10"],
    "trivialaugment": ["--auto_augment=trivialaugment"],
    "random_erasing": ["--random_erasing=0.25"],
    "mixup": ["--mixup_alpha=0.4"],
    "cutmix": ["--cutmix_alpha=1.0"],
    "mixup+cutmix": ["--mixup_alpha=0.4", "--cutmix_alpha=1.0", "--mixup_switch_prob=0.5"],
    "ema": ["--ema_decay=0.99"],
    # GoogleNet's gradient norm is about 250 at the start on the digits: 1 clips every step (a much smaller
    # step), 100 the large early ones.
    "clip_grad_norm": ["--clip_grad_norm=1.0"],
    "clip_grad_norm_100": ["--clip_grad_norm=100"],
    "accumulation": ["--grad_accumulation_steps=2"],
}


def table(runs: list[Run], seeds: list[int]) -> str:
    """Test accuracy (%) per option and seed, the mean, and the mean's difference from ``off``."""
    accuracy = {(r.path, r.seed): 100 * r.accuracy for r in runs}
    options = list(dict.fromkeys(r.path for r in runs))
    means = {o: sum(accuracy[(o, s)] for s in seeds) / len(seeds) for o in options}
    lines = ["| option | flags | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs off |",
             "|---|---|" + "---|" * (len(seeds) + 2)]
    for option in options:
        delta = f"{means[option] - means['off']:+.1f}" if "off" in means else ""
        cells = " | ".join(f"{accuracy[(option, s)]:.1f}" for s in seeds)
        flags = " ".join(OPTIONS[option]) or "(none)"
        lines.append(f"| {option} | {flags} | {cells} | {means[option]:.1f} | {delta} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of CIFAR-10 binary files, or digits / fashion-mnist")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from {', '.join(OPTIONS)}")
    parser.add_argument("--epoch_size", type=int, default=6)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--config_path", default=str(REPO / "cifar10_config_cpu.yaml"))
    parser.add_argument("--output_dir", default="recipes_ab", help="checkpoints and logs of every run")
    parser.add_argument("--extra", default="", help="more train.py/eval.py flags for every run, space-separated")
    args = parser.parse_args()
    options = [o for o in args.options.split(",") if o]
    unknown = [o for o in options if o not in OPTIONS]
    if not options or unknown:
        print(f"error: --options {args.options!r}: expected names from {', '.join(OPTIONS)}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        print(f"error: --seeds {args.seeds!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    output = Path(args.output_dir).resolve()
    try:
        data = dataset_folder(args.data, output)
    except (FileNotFoundError, ImportError) as err:
        print(f"error: --data {args.data}: {err}", file=sys.stderr)
        return 2
    if not data.is_dir():
        print(f"error: --data {data}: not a folder (expected CIFAR-10 binary files, or digits / fashion-mnist)",
              file=sys.stderr)
        return 2
    common = [f"--config_path={args.config_path}", f"--image_height={args.image_size}",
              f"--image_width={args.image_size}", f"--epoch_size={args.epoch_size}", *args.extra.split()]
    runs = []
    try:
        for seed in seeds:
            for option in options:
                run = train_and_evaluate(option, seed, data, output, common, options=OPTIONS[option])
                runs.append(run)
                print(f"{option}, seed {seed}: {100 * run.accuracy:.1f} %, final-quarter loss {run.final_loss:.3f}",
                      flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(table(runs, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
