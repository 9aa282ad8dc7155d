"""Side-by-side speed of our GoogleNet: training and inference images/s, the input pipelines, and
the peers a CPU user would pick, measured in one run: the same network in PyTorch eager (NCHW), with
``channels_last`` and with ``torch.compile`` (when PyTorch is installed), and our ONNX export on
OpenVINO (inference, when OpenVINO is installed).

    python benchmark.py                                   # 224 and 32 input, batch 32, table + JSON
    python benchmark.py --engine mindspore --engine "torch layout=channels_last" --engine openvino
    python benchmark.py --short                           # seconds-long smoke run (CI; no torch.compile)

Every engine has a worker process per input size, and only one process works at a time. After
compiling and warming up, the engines take turns case by case for ``--rounds`` rounds (the order
alternates each round), each turn timing ``--steps`` steps (a pipeline: at least 16 batches, after
emptying its prefetch queues) after ``--turn_warmup`` untimed ones (training and inference steps
only: an engine's first step after idling while the others worked is slow); a round's images/s is
batch x steps / seconds, and the table shows the median over rounds, the ratio to the fastest peer
of that row, and the arithmetic rate: GFLOP/s (forward FLOPs per image x3 for a training step) and
its share of this machine's fp32 peak, taken as the rate of a float32 GEMM (2048^3, all cores, best of
3, the faster of numpy's and PyTorch's) measured at the start.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from src.bench.engines import MODEL_TASKS, PIPELINE_TASKS, TRAIN_PY_TASK, Case, serve
from src.errors import ConfigError, UserError, run_main

REPO = Path(__file__).resolve().parent
DEFAULT_CONFIG = REPO / "cifar10_config_cpu.yaml"
PEER_KINDS = ("torch", "openvino")
# ImageNet JPEGs average about 500x375 pixels; square images of the same area decode alike.
IMAGENET_LIKE_SIZE = 432


@dataclass
class Engine:
    """One worker process: ``kind`` in {mindspore, torch, openvino, pipeline} with its options."""

    label: str
    kind: str
    options: dict
    status: str = "not started"
    process: multiprocessing.Process | None = None
    connection: object = None
    compile_s: dict = field(default_factory=dict)

    def request(self, *message):
        self.connection.send(message)
        state, value = self.connection.recv()
        if state != "ok":
            raise RuntimeError(value)
        return value


def parse_engine(spec: str, config: Path) -> Engine:
    """``"mindspore threads=2 jit_level=O1"`` -> Engine(kind mindspore, options {...})."""
    kind, *pairs = spec.split()
    if kind not in ("mindspore", *PEER_KINDS):
        raise ConfigError(f"--engine '{spec}': unknown engine '{kind}'; expected mindspore, torch or openvino")
    # The oneDNN ISA cap works around MindSpore's kernel choice; the peers run as they ship unless isa= is given.
    options = {"config": str(config)} if kind != "torch" else {}
    if kind != "mindspore":
        options["isa"] = "default"
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--engine '{spec}': option '{pair}' is not key=value")
        options[key] = value
    return Engine(label=spec, kind=kind, options=options)


def runs(kind: str, task: str) -> bool:
    """train.py is MindSpore's own loop; OpenVINO only infers."""
    return {"mindspore": True, "torch": task != TRAIN_PY_TASK, "openvino": task == "infer"}[kind]


def default_engines(short: bool) -> list[str]:
    """Ours, and every peer that is installed (torch.compile left out of the short run: it compiles for minutes)."""
    specs = ["mindspore"]
    if importlib.util.find_spec("torch"):
        specs += ["torch", "torch layout=channels_last"] + ([] if short else ["torch compile=true"])
    if importlib.util.find_spec("openvino"):
        specs.append("openvino")
    return specs


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="224,32", help="input sizes (square), comma-separated")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case and engine")
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--turn_warmup", type=int, default=1,
                        help="untimed training/inference steps at the start of each turn, after idling")
    parser.add_argument("--tasks", default="train,infer,train.py",
                        help="train: a training step; infer: inference; train.py: Model.train over the CIFAR pipeline")
    parser.add_argument("--engine", action="append", dest="engines", metavar="SPEC",
                        help="'mindspore [threads=N] [jit_level=O0|O1|O2] [key=value ...]', "
                             "'torch [threads=N] [layout=contiguous|channels_last] [compile=true] [isa=...]' or "
                             "'openvino [threads=N]'; repeatable. Default: mindspore, torch eager, channels_last "
                             "and compile=true when PyTorch is installed (not compile with --short), and openvino "
                             "when it is installed")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config the MindSpore engines use")
    parser.add_argument("--pipeline", default="cifar10,imagenet",
                        help="input pipelines to time alone ('' = none)")
    parser.add_argument("--pipeline_size", type=int, default=None,
                        help="image size of the pipelines (default: the config's image_height)")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), help="where to write the results")
    parser.add_argument("--short", action="store_true",
                        help="smoke run: 32x32, batch 4, one round of one step, small data")
    return parser


SHORT_DEFAULTS = {"sizes": "32", "batch": 4, "rounds": 1, "steps": 1, "warmup": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; ``--short`` changes the defaults only, so explicit options still win."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.short:
        parser.set_defaults(**SHORT_DEFAULTS)
        args = parser.parse_args(argv)
    return args


def check_args(args: argparse.Namespace) -> None:
    for name in ("batch", "rounds", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}={getattr(args, name)} is invalid; expected an integer >= 1")
    for name in ("warmup", "turn_warmup"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name}={getattr(args, name)} is invalid; expected an integer >= 0")
    if not args.config.is_file():
        raise ConfigError(f"--config={args.config}: no such file")
    unknown = [task for task in split_list(args.tasks) if task not in (*MODEL_TASKS, TRAIN_PY_TASK)]
    if unknown:
        raise ConfigError(f"--tasks: unknown task '{unknown[0]}'; expected train, infer or train.py")
    unknown = [name for name in split_list(args.pipeline) if name not in PIPELINE_TASKS]
    if unknown:
        raise ConfigError(f"--pipeline: unknown pipeline '{unknown[0]}'; expected cifar10 or imagenet")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(item) for item in split_list(text)]
    except ValueError:
        raise ConfigError(f"--sizes={text!r} is invalid; expected comma-separated integers such as 224,32") from None
    if not sizes or min(sizes) < 32:
        raise ConfigError(f"--sizes={text!r} is invalid; expected sizes >= 32 (the network downsamples 32x)")
    return sizes


def write_data(root: Path, short: bool, needs: set[str]) -> dict[str, str]:
    """Generated files in the real formats for the pipelines and train.py cases."""
    from src.demo_data import write_cifar10_layout, write_image_folder

    folders = {}
    if "cifar10" in needs:
        folders["cifar10"] = str(write_cifar10_layout(root / "cifar", num_train=160 if short else 2560,
                                                      num_test=10, seed=0))
    if "imagenet" in needs:
        folders["imagenet"] = str(write_image_folder(root / "imagenet", num_classes=4, per_class=4 if short else 24,
                                                     size=64 if short else IMAGENET_LIKE_SIZE, seed=0))
    return folders


def start(engine: Engine, batch: int) -> None:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    engine.process = context.Process(target=serve, args=(engine.kind, dict(engine.options), batch, theirs),
                                     daemon=True)
    engine.process.start()
    engine.connection = ours
    state, value = ours.recv()
    engine.status = "ok" if state == "ok" else f"unavailable: {value}"


def stop(engine: Engine) -> None:
    if engine.process is None:
        return
    if engine.process.is_alive():
        try:
            engine.connection.send(("quit",))
        except OSError:
            pass
        engine.process.join(timeout=30)
    if engine.process.is_alive():
        engine.process.terminate()


def measure(plan: list[tuple[Case, list[Engine]]], args: argparse.Namespace, batch_of) -> dict:
    """Compile and warm every (case, engine), then interleave the timed rounds; images/s per round."""
    rounds: dict[tuple[Case, str], list[float]] = {}
    for case, engines in plan:
        for engine in engines:
            try:
                engine.compile_s[case] = engine.request("prepare", case)
                if args.warmup:
                    engine.request("run", case, args.warmup)
                rounds[(case, engine.label)] = []
            except RuntimeError as error:
                engine.compile_s[case] = None
                print(f"[{engine.label}] {case[0]} {case[1]}: {error}", file=sys.stderr, flush=True)
    for index in range(args.rounds):
        for case, engines in plan:
            order = engines if index % 2 == 0 else engines[::-1]
            for engine in order:
                if (case, engine.label) not in rounds:
                    continue
                try:
                    if args.turn_warmup and case[0] in MODEL_TASKS:
                        engine.request("run", case, args.turn_warmup)
                    seconds = engine.request("run", case, args.steps)
                except RuntimeError as error:
                    print(f"[{engine.label}] {case[0]} {case[1]}: {error}", file=sys.stderr, flush=True)
                    del rounds[(case, engine.label)]
                    continue
                rounds[(case, engine.label)].append(batch_of(case) * len(seconds) / sum(seconds))
        print(f"round {index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return rounds


def machine_info() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA",
                                                 "(MindSpore engines: AVX2, lifted when channels-last)")}
    for package in ("mindspore", "torch", "numpy"):
        spec = importlib.util.find_spec(package)
        info[package] = _version(package) if spec else None
    return info


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def summarise(rounds: dict, plan, peers: list[str], train_size: int, pipeline_key: Case | None,
              peak_gflops: float | None = None) -> dict:
    rows = []
    for case, engines in plan:
        for engine in engines:
            values = rounds.get((case, engine.label))
            row = {"task": case[0], "size": case[1], "engine": engine.label,
                   "compile_s": _round(engine.compile_s.get(case)), "images_per_s": None, "rounds": values or []}
            if values:
                row.update(images_per_s=_round(statistics.median(values)), min=_round(min(values)),
                           max=_round(max(values)))
                if case[0] in MODEL_TASKS:
                    gflops = row["images_per_s"] * image_gflop(case[1]) * (3 if case[0] == "train" else 1)
                    row.update(gflops=_round(gflops),
                               peak_share=round(gflops / peak_gflops, 3) if peak_gflops else None)
            rows.append(row)
    ratios = []
    for row in rows:
        if row["engine"] in peers or row["task"] in PIPELINE_TASKS or not row["images_per_s"]:
            continue
        peer_rows = [r for r in rows if r["engine"] in peers and (r["task"], r["size"]) == (row["task"], row["size"])
                     and r["images_per_s"]]
        if peer_rows:
            best = max(peer_rows, key=lambda r: r["images_per_s"])
            ratios.append({"task": row["task"], "size": row["size"], "engine": row["engine"], "peer": best["engine"],
                           "ratio": round(row["images_per_s"] / best["images_per_s"], 3)})
    result = {"results": rows, "ratios": ratios}
    if pipeline_key:
        pipe = next((r for r in rows if (r["task"], r["size"]) == pipeline_key), None)
        train = next((r for r in rows if r["task"] == "train" and r["size"] == train_size
                      and r["engine"].startswith("mindspore")), None)
        if pipe and train and pipe["images_per_s"] and train["images_per_s"]:
            result["pipeline_vs_train"] = {"pipeline": f"{pipeline_key[0]} {pipeline_key[1]}",
                                           "train_engine": train["engine"], "size": train_size,
                                           "ratio": round(pipe["images_per_s"] / train["images_per_s"], 2)}
    return result


@functools.cache
def image_gflop(size: int, num_classes: int = 10) -> float:
    """Forward GFLOP of one image (2 per multiply-add of the convolutions and the classifier), read off
    src/googlenet.py's network: its cells in order, each stride-2 convolution or pool halving the plane."""
    import mindspore.nn as nn

    from src.googlenet import create_model

    side, flops = size, 0
    for _, cell in create_model(num_classes).cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.MaxPool2d)):
            stride = cell.stride if isinstance(cell.stride, int) else cell.stride[0]
            side = -(-side // stride)  # 'same' padding
        if isinstance(cell, nn.Conv2d):
            height, width = cell.kernel_size
            flops += 2 * cell.in_channels * cell.out_channels * height * width * side * side
        elif isinstance(cell, nn.Dense):
            flops += 2 * cell.in_channels * cell.out_channels
    return flops / 1e9


def gemm_peak_gflops() -> tuple[float, str]:
    """This machine's fp32 rate as a float32 GEMM reaches it (2048^3 on all cores, best of 3): the
    faster of numpy's BLAS and, when installed, PyTorch's (numpy's OpenBLAS runs a generic kernel on
    some new CPUs: a third of PyTorch's rate on an AVX-512 Xeon). Returns the rate and the library."""
    import numpy as np

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    multiplies = {"numpy": lambda: a @ a}
    if importlib.util.find_spec("torch") is not None:
        import torch

        tensor = torch.from_numpy(a)
        multiplies["torch"] = lambda: tensor @ tensor
    rates = {}
    for library, multiply in multiplies.items():
        rates[library] = 0.0
        for _ in range(3):
            start = time.perf_counter()
            multiply()
            rates[library] = max(rates[library], 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    library = max(rates, key=rates.get)
    return rates[library], library


def _shown_path(path: str | Path) -> str:
    """Paths inside the repository are reported relative to it, so reports compare across checkouts."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _round(value):
    return None if value is None else round(value, 2)


def format_table(summary: dict, engines: list[Engine]) -> str:
    lines = [f"{'task':<10}{'size':>5}  {'engine':<30}{'images/s':>10}{'min-max':>16}{'compile s':>10}"
             f"{'GFLOP/s':>9}{'peak':>6}  {'ours / best peer':<30}"]
    for row in summary["results"]:
        ratio = next((r for r in summary["ratios"] if (r["task"], r["size"], r["engine"])
                      == (row["task"], row["size"], row["engine"])), None)
        spread = f"{row['min']:.1f}-{row['max']:.1f}" if row["images_per_s"] else "-"
        speed = f"{row['images_per_s']:.1f}" if row["images_per_s"] else "failed"
        versus = f"{ratio['ratio']:.2f}x ({ratio['peer']})" if ratio else ""
        share = row.get("peak_share")
        lines.append(f"{row['task']:<10}{row['size']:>5}  {row['engine']:<30}{speed:>10}{spread:>16}"
                     f"{_cell(row['compile_s'], '.1f'):>10}{_cell(row.get('gflops'), '.1f'):>9}"
                     f"{_cell(None if share is None else 100 * share, '.0f', '%'):>6}  {versus}")
    for engine in engines:
        if engine.status != "ok":
            lines.append(f"{engine.label}: {engine.status}")
    if "pipeline_vs_train" in summary:
        p = summary["pipeline_vs_train"]
        lines.append(f"input pipeline ({p['pipeline']}) / training step ({p['train_engine']}, {p['size']}): "
                     f"{p['ratio']:.2f}x")
    return "\n".join(lines)


def _cell(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def main() -> None:
    args = parse_args()
    check_args(args)
    sizes = parse_sizes(args.sizes)
    tasks = split_list(args.tasks)
    pipelines = split_list(args.pipeline)
    specs = args.engines or default_engines(args.short)
    engines = [parse_engine(spec, args.config) for spec in specs]
    from src.model_utils.config import load_config

    config = load_config([f"--config_path={args.config}"])
    pipeline_size = args.pipeline_size or (32 if args.short else config.image_height)
    peak_gflops, peak_library = gemm_peak_gflops()

    with tempfile.TemporaryDirectory(prefix="googlenet-bench-") as scratch:
        folders = write_data(Path(scratch), args.short,
                             set(pipelines) | ({"cifar10"} if TRAIN_PY_TASK in tasks else set()))
        pipe_engine = Engine(label="pipeline", kind="pipeline",
                             options={"config": str(args.config), **folders}) if pipelines else None
        for engine in engines:
            if engine.kind == "mindspore" and "cifar10" in folders:
                engine.options["data"] = folders["cifar10"]
        # One worker process per engine and input size, as a user's process trains or evaluates at one
        # size: steps at 224x224 between them slowed our 32x32 steps (docs/PERFORMANCE.md, method).
        workers = {(e.label, size): replace(e, options=dict(e.options), compile_s={})
                   for e in engines for size in sizes}
        plan: list[tuple[Case, list[Engine]]] = []
        for task in tasks:
            for size in sizes:
                runners = [workers[(e.label, size)] for e in engines if runs(e.kind, task)]
                plan.append(((task, size), runners))
        if pipe_engine:
            plan += [((name, pipeline_size), [pipe_engine]) for name in pipelines]
        load_before = load_average()
        everyone = list(workers.values()) + ([pipe_engine] if pipe_engine else [])
        try:
            for engine in everyone:
                start(engine, args.batch)
            for engine in engines:  # an engine's status: its first worker that failed to start, else ok
                engine.status = next((w.status for (label, _), w in workers.items()
                                      if label == engine.label and w.status != "ok"), "ok")
            plan = [(case, [e for e in runners if e.status == "ok"]) for case, runners in plan]
            started = time.perf_counter()
            rounds = measure(plan, args, lambda case: args.batch)
            seconds = time.perf_counter() - started
        finally:
            for engine in everyone:
                stop(engine)

    reported = engines + ([pipe_engine] if pipe_engine else [])
    pipeline_key = ("cifar10", pipeline_size) if "cifar10" in pipelines else None
    peers = [e.label for e in engines if e.kind in PEER_KINDS and e.status == "ok"]
    summary = summarise(rounds, plan, peers, pipeline_size, pipeline_key, peak_gflops)
    report = {
        "machine": {**machine_info(), "fp32_peak_gflops": round(peak_gflops, 1),
                    "peak_method": f"float32 GEMM ({peak_library}), 2048^3, all cores, best of 3, before the "
                                   "engines start"},
        "load_average": {"before": load_before, "after": load_average()},
        "settings": {"sizes": sizes, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
                     "warmup": args.warmup, "turn_warmup": args.turn_warmup, "tasks": tasks, "pipelines": pipelines,
                     "pipeline_size": pipeline_size,
                     "config": _shown_path(args.config), "seconds": round(seconds, 1)},
        "engines": [{"label": e.label, "kind": e.kind,
                     "options": {k: _shown_path(v) if k == "config" else v for k, v in e.options.items()
                                 if k not in ("cifar10", "imagenet", "data")},
                     "status": e.status} for e in reported],
        **summary,
    }
    print(format_table(summary, reported), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", flush=True)
    failed = [f"{row['task']} {row['size']} ({row['engine']})" for row in summary["results"]
              if row["images_per_s"] is None]
    failed += [f"{e.label} ({e.status})" for e in reported if e.status != "ok" and e.kind not in PEER_KINDS]
    if failed:
        raise UserError(f"no result for: {', '.join(failed)}; see the messages above")


if __name__ == "__main__":
    run_main(main)
