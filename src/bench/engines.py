"""What benchmark.py times, one engine per worker process so that thread pools never overlap.

- ``MindSporeEngine``: our GoogleNet through train.py's own code path (config loader,
  ``configure_device``, ``create_model_from_config``, ``create_train_model``): a training step is one call of
  the train cell that ``Model.train`` runs each step; inference is the network in eval mode.
  ``train.py`` cases run ``Model.train`` itself over the real CIFAR pipeline.
- ``TorchEngine``: the hand-written PyTorch peer (src/bench/torch_googlenet.py), run as a CPU user
  would tune it when asked: ``layout=channels_last`` (model and input in NHWC), ``compile=true``
  (``torch.compile`` of the model; inference with the inductor's freezing, which folds the weights
  as constants).
- ``OpenVINOEngine``: inference only, our network exported to ONNX (export.py's code path) run by
  OpenVINO on all cores with the latency hint, in float32.
- ``PipelineEngine``: the input pipelines of src/dataset.py alone, iterated as fast as they go.

A worker answers ``("prepare", case)`` (build, compile, one warm-up step; returns seconds) and
``("run", case, steps)`` (returns the seconds of each step); ``case`` is ``(task, size)``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

Case = tuple[str, int]
MODEL_TASKS = ("train", "infer")
TRAIN_PY_TASK = "train.py"
PIPELINE_TASKS = ("cifar10", "imagenet")
MIN_PIPELINE_BATCHES = 16


def _parse_int(options: dict, key: str) -> int | None:
    return int(options[key]) if options.get(key) not in (None, "") else None


class MindSporeEngine:
    """Options: threads (CPU kernel threads), jit_level (O0/O1/O2), config (YAML path),
    and any config key (e.g. dataset_sink_mode=true) as a command-line override."""

    ENGINE_KEYS = ("threads", "jit_level", "config", "data")

    def __init__(self, options: dict, batch: int) -> None:
        import mindspore as ms

        self.ms = ms
        self.options = options
        self.batch = batch
        self.cells: dict[Case, object] = {}
        self.inputs: dict[Case, tuple] = {}
        config = self.config(224)
        from src.model_utils.device_adapter import configure_device

        configure_device(config)
        if options.get("jit_level"):
            ms.set_context(jit_config={"jit_level": options["jit_level"]})
        threads = _parse_int(options, "threads")
        if threads:
            ms.device_context.cpu.op_tuning.threads_num(threads)

    def config(self, size: int):
        from src.model_utils.config import load_config

        overrides = [f"--{key}={value}" for key, value in self.options.items() if key not in self.ENGINE_KEYS]
        return load_config([f"--config_path={self.options['config']}", f"--batch_size={self.batch}",
                            f"--image_height={size}", f"--image_width={size}", *overrides])

    def prepare(self, case: Case) -> None:
        ms = self.ms
        from src.lr_scheduler import create_lr_schedule
        from src.models import create_inference_model, create_model_from_config
        from src.trainer import create_train_model

        task, size = case
        config = self.config(size)
        ms.set_seed(config.seed)
        if task == TRAIN_PY_TASK:
            self.cells[case] = self._train_py(config, create_model_from_config(config))
            return
        rng = np.random.default_rng(0)
        images = ms.Tensor(rng.standard_normal((self.batch, 3, size, size), dtype=np.float32))
        labels = ms.Tensor((np.arange(self.batch) % config.num_classes).astype(np.int32))
        if task == "train":
            # The cell Model.train calls once per step (loss, optimiser, AMP and loss scale of the config).
            net = create_model_from_config(config)
            cell = create_train_model(config, net, create_lr_schedule(config, 1000))._train_network
            cell.set_train(True)
            self.inputs[case] = (images, labels)
        else:
            cell = create_inference_model(config, None)  # as eval.py runs it
            self.inputs[case] = (images,)
        self.cells[case] = cell

    def _train_py(self, config, net):
        """Model.train over the real CIFAR-10 pipeline, as train.py runs it."""
        from src.dataset import create_dataset_from_config
        from src.lr_scheduler import create_lr_schedule
        from src.trainer import create_train_model

        config.train_data_path = self.options["data"]
        steps_per_epoch = create_dataset_from_config(config, training=True).get_dataset_size()
        model = create_train_model(config, net, create_lr_schedule(config, steps_per_epoch))
        return model, config

    def run(self, case: Case, steps: int) -> list[float]:
        if case[0] == TRAIN_PY_TASK:
            return self._run_train_py(case, steps)
        cell, inputs = self.cells[case], self.inputs[case]
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            out = cell(*inputs)
            (out[0] if isinstance(out, tuple) else out).asnumpy()
            times.append(time.perf_counter() - start)
        return times

    def _run_train_py(self, case: Case, steps: int) -> list[float]:
        """One epoch of ``steps`` steps through Model.train; in sink mode the epoch time is split evenly."""
        from mindspore.train import Callback

        from src.dataset import create_dataset_from_config

        model, config = self.cells[case]
        sink = config.dataset_sink_mode
        dataset = create_dataset_from_config(config, training=True).take(steps + 1)
        marks: list[float] = []

        class Stamps(Callback):
            def on_train_epoch_begin(self, run_context) -> None:
                marks.append(time.perf_counter())

            def on_train_step_end(self, run_context) -> None:
                if not sink:
                    marks.append(time.perf_counter())

            def on_train_epoch_end(self, run_context) -> None:
                if sink:
                    marks.append(time.perf_counter())

        # One extra step first: it carries the pipeline's start-up, which is not a step's cost.
        model.train(1, dataset, callbacks=[Stamps()], dataset_sink_mode=sink)
        if sink:
            return [(marks[-1] - marks[0]) / (steps + 1)] * steps
        return list(np.diff(marks))[1:]


class TorchEngine:
    """Options: threads (torch.set_num_threads; default: every core), layout (contiguous or
    channels_last), compile (true: torch.compile; inference frozen)."""

    def __init__(self, options: dict, batch: int) -> None:
        import torch

        self.torch = torch
        self.batch = batch
        self.channels_last = options.get("layout", "contiguous") == "channels_last"
        if options.get("layout", "contiguous") not in ("contiguous", "channels_last"):
            raise ValueError(f"layout={options['layout']!r}: expected contiguous or channels_last")
        self.compiled = str(options.get("compile", "false")).lower() in ("1", "true")
        torch.set_num_threads(_parse_int(options, "threads") or os.cpu_count() or 1)
        self.steps: dict[Case, object] = {}

    def prepare(self, case: Case) -> None:
        torch = self.torch
        from src.bench.torch_googlenet import GoogleNet, create_optimizer

        task, size = case
        torch.manual_seed(1)
        net = GoogleNet(num_classes=10)
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(self.batch, 3, size, size, generator=generator)
        labels = torch.arange(self.batch) % 10
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        if task == "train":
            net.train()
            optimizer = create_optimizer(net, lr=0.025, momentum=0.9, weight_decay=5e-4)
            loss_fn = torch.nn.CrossEntropyLoss()

            model = torch.compile(net) if self.compiled else net

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(images), labels)
                loss.backward()
                optimizer.step()
                loss.item()
        else:
            net.eval()
            if self.compiled:
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
                model = torch.compile(net)
            else:
                model = net

            def step() -> None:
                with torch.no_grad():
                    model(images).sum().item()
        self.steps[case] = step

    def run(self, case: Case, steps: int) -> list[float]:
        step = self.steps[case]
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return times


class OpenVINOEngine:
    """Inference only: our network (initialised with the config's seed) exported to ONNX as export.py
    exports it, compiled by OpenVINO for the CPU with the latency hint on every core. Options: config
    (YAML path), threads (inference threads; default every core)."""

    def __init__(self, options: dict, batch: int) -> None:
        import openvino  # noqa: F401  (fails early, as the engine's status, when it is missing)

        self.options = options
        self.batch = batch
        self.requests: dict[Case, tuple] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="googlenet-openvino-"))

    def prepare(self, case: Case) -> None:
        import mindspore as ms
        import openvino as ov

        from src.exporter import export_network
        from src.googlenet import create_model
        from src.model_utils.config import load_config

        task, size = case
        if task != "infer":
            raise ValueError("OpenVINO runs inference only")
        config = load_config([f"--config_path={self.options['config']}"])
        ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
        ms.set_seed(config.seed)
        net = create_model(10, dropout_rate=config.dropout_rate, seed=config.seed)
        net.set_train(False)
        onnx = export_network(net, (self.batch, 3, size, size), self.scratch / f"googlenet_{size}", "ONNX")
        threads = _parse_int(self.options, "threads") or os.cpu_count() or 1
        # float32 like every other engine: on CPUs with bf16 units OpenVINO would otherwise infer in bf16.
        compiled = ov.Core().compile_model(str(onnx), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                             "INFERENCE_NUM_THREADS": threads,
                                                             "INFERENCE_PRECISION_HINT": "f32"})
        images = np.random.default_rng(0).standard_normal((self.batch, 3, size, size), dtype=np.float32)
        self.requests[case] = (compiled.create_infer_request(), images)

    def run(self, case: Case, steps: int) -> list[float]:
        request, images = self.requests[case]
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            request.infer({0: images})
            float(request.get_output_tensor(0).data.sum())
            times.append(time.perf_counter() - start)
        return times


class PipelineEngine:
    """The training input pipelines of src/dataset.py on generated files; a step is one batch.
    Options: config (YAML whose num_parallel_workers is used), cifar10 / imagenet (data folders)."""

    def __init__(self, options: dict, batch: int) -> None:
        self.options = options
        self.batch = batch
        self.iterators: dict[Case, object] = {}

    def prepare(self, case: Case) -> None:
        from src.dataset import create_dataset
        from src.model_utils.config import load_config

        name, size = case
        workers = load_config([f"--config_path={self.options['config']}"]).num_parallel_workers
        data = create_dataset(name, Path(self.options[name]), training=True, batch_size=self.batch,
                              image_size=(size, size), num_parallel_workers=workers, num_classes=10)
        self.iterators[case] = data.repeat().create_tuple_iterator(output_numpy=True, num_epochs=1)
        next(self.iterators[case])

    def run(self, case: Case, steps: int) -> list[float]:
        """Empty the prefetch queues first (they fill while other engines work), then time at
        least ``MIN_PIPELINE_BATCHES`` batches at the rate the pipeline produces them."""
        import mindspore.dataset as ds

        iterator = self.iterators[case]
        for _ in range(2 * ds.config.get_prefetch_size()):
            next(iterator)
        times = []
        for _ in range(max(steps, MIN_PIPELINE_BATCHES)):
            start = time.perf_counter()
            next(iterator)
            times.append(time.perf_counter() - start)
        return times


ENGINES = {"mindspore": MindSporeEngine, "torch": TorchEngine, "openvino": OpenVINOEngine,
           "pipeline": PipelineEngine}


def serve(kind: str, options: dict, batch: int, connection) -> None:
    """Worker loop: build the engine, then answer prepare/run requests until ``quit``."""
    if "isa" in options:  # oneDNN's instruction-set cap for this worker; "default" = no cap
        isa = options.pop("isa")
        if isa in ("", "default"):
            os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
        else:
            os.environ["ONEDNN_MAX_CPU_ISA"] = isa
    try:
        engine = ENGINES[kind](options, batch)
        connection.send(("ok", None))
    except Exception as error:  # reported to the driver, which prints it as the engine's status
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        request = connection.recv()
        if request[0] == "quit":
            return
        try:
            if request[0] == "prepare":
                start = time.perf_counter()
                engine.prepare(tuple(request[1]))
                engine.run(tuple(request[1]), 1)  # compiles graphs / creates kernels
                connection.send(("ok", time.perf_counter() - start))
            else:
                connection.send(("ok", engine.run(tuple(request[1]), request[2])))
        except Exception as error:
            connection.send(("error", f"{type(error).__name__}: {error}"))
