"""Per-image latency of the offline inference app (OpenVINO CPU backend) vs MindSpore Python inference
on the same model, batch 1, on this machine.

    python scripts/bench_infer_latency.py --images=50 --image_size=224 [--ckpt_file=x.ckpt --num_classes=10]

Both run the same weights (the checkpoint, or one random initialisation saved for both): the app
an ONNX export of them, MindSpore the network in graph mode after a warm-up, each image once.
Only the model call is timed on both sides (the app's own time_Result figure).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--ckpt_file", default="", help="weights to use ('' = a random initialisation)")
    args = parser.parse_args()

    from src.model_utils.device_adapter import cap_cpu_kernels

    cap_cpu_kernels()
    import mindspore as ms

    from src.checkpoint import load_weights
    from src.exporter import export_network
    from src.googlenet import create_model

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    net = create_model(args.num_classes)
    if args.ckpt_file:
        load_weights(net, args.ckpt_file)
    net.set_train(False)
    size = args.image_size
    images = np.random.default_rng(0).normal(size=(args.images, 1, 3, size, size)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = export_network(net, (1, 3, size, size), work / "googlenet", "ONNX")
        (work / "inputs").mkdir()
        for index, image in enumerate(images):
            image.tofile(work / "inputs" / f"img_{index:05d}.bin")
        subprocess.run(["bash", str(REPO / "ascend310_infer" / "build.sh"), "openvino"], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHON=sys.executable))
        app = REPO / "ascend310_infer" / "out" / "openvino" / "main"
        subprocess.run([str(app), f"--model_path={model}", "--dataset=cifar10", f"--dataset_path={work / 'inputs'}",
                        f"--result_path={work / 'results'}", f"--time_path={work / 'time'}"], check=True,
                       stdout=subprocess.DEVNULL)
        summary = (work / "time" / "test_perform_static.txt").read_text()
        app_ms = float(re.search(r"per image: ([\d.]+) ms", summary).group(1))
        app_logits = np.stack([np.fromfile(work / "results" / f"img_{i:05d}_0.bin", dtype=np.float32)
                               for i in range(args.images)])

    net(ms.Tensor(images[0])).asnumpy()  # compile and warm up
    seconds, ms_logits = 0.0, []
    for image in images:
        tensor = ms.Tensor(image)
        start = time.perf_counter()
        ms_logits.append(net(tensor).asnumpy()[0])
        seconds += time.perf_counter() - start
    ms_ms = 1000 * seconds / args.images
    diff = float(np.max(np.abs(app_logits - np.stack(ms_logits))))

    print(f"GoogleNet {args.num_classes} classes, {size}x{size}, batch 1, {args.images} images, "
          f"{os.cpu_count()} CPUs, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')}")
    print(f"C++ app (OpenVINO, f32): {app_ms:.2f} ms per image")
    print(f"MindSpore {ms.__version__} Python (graph mode): {ms_ms:.2f} ms per image")
    note = "" if args.ckpt_file else " (random weights: logits sit near the bias, so this says little)"
    print(f"speed-up {ms_ms / app_ms:.2f}x; max abs logit difference {diff:.2e}{note}")


if __name__ == "__main__":
    main()
