"""benchmark.py in its short mode: the real engines and pipelines run, the output format is checked
(no timing assertions: speeds on shared CI machines say nothing)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import statistics
from types import SimpleNamespace

import pytest

from tests.conftest import assert_user_error, run_script

TASKS = ("train", "infer", "train.py")
PIPELINES = ("cifar10", "imagenet")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    result = run_script("benchmark.py", "--short", "--json", "out/bench.json", cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads((workdir / "out" / "bench.json").read_text())


def test_short_run_reports_every_case_of_mindspore_and_the_pipelines(short_run):
    _, report = short_run
    assert report["settings"]["sizes"] == [32] and report["settings"]["batch"] == 4
    assert report["settings"]["turn_warmup"] == 1
    assert report["machine"]["mindspore"] == importlib.metadata.version("mindspore")
    assert report["machine"]["cores"] >= 1
    ours = {(row["task"], row["size"]): row for row in report["results"] if row["engine"] == "mindspore"}
    assert set(ours) == {(task, 32) for task in TASKS}
    pipes = {row["task"]: row for row in report["results"] if row["engine"] == "pipeline"}
    assert set(pipes) == set(PIPELINES)
    for row in [*ours.values(), *pipes.values()]:
        assert len(row["rounds"]) == report["settings"]["rounds"] and min(row["rounds"]) > 0, row
        assert row["images_per_s"] == pytest.approx(statistics.median(row["rounds"]), rel=1e-3), row
    assert report["pipeline_vs_train"]["ratio"] == pytest.approx(
        pipes["cifar10"]["images_per_s"] / ours[("train", 32)]["images_per_s"], rel=0.02)


def test_summary_takes_median_spread_and_ratios_of_the_rounds():
    """The report's arithmetic on known rounds: median, min and max per row, ours / the fastest peer of
    the row, GFLOP/s and the share of the peak."""
    import benchmark

    engines = {label: SimpleNamespace(label=label, compile_s={}) for label in ("mindspore", "torch", "openvino")}
    rounds = {(("train", 32), "mindspore"): [30.0, 10.0, 20.0, 50.0, 40.0],
              (("train", 32), "torch"): [8.0, 12.0, 10.0],
              (("infer", 32), "mindspore"): [100.0], (("infer", 32), "torch"): [50.0],
              (("infer", 32), "openvino"): [200.0]}
    plan = [(("train", 32), [engines["mindspore"], engines["torch"]]),
            (("infer", 32), list(engines.values()))]
    summary = benchmark.summarise(rounds, plan, ["torch", "openvino"], 32, None, peak_gflops=100.0)
    rows = {(row["task"], row["engine"]): row for row in summary["results"]}
    ours = rows[("train", "mindspore")]
    assert (ours["images_per_s"], ours["min"], ours["max"]) == (30, 10, 50)
    assert rows[("train", "torch")]["images_per_s"] == 10
    assert ours["gflops"] == pytest.approx(30 * 3 * benchmark.image_gflop(32), abs=0.01)
    assert ours["peak_share"] == pytest.approx(ours["gflops"] / 100, abs=1e-3)
    assert summary["ratios"] == [
        {"task": "train", "size": 32, "engine": "mindspore", "peer": "torch", "ratio": 3.0},
        {"task": "infer", "size": 32, "engine": "mindspore", "peer": "openvino", "ratio": 0.5}]


def test_forward_flops_of_the_network():
    """About 1.5 G multiply-adds per 224x224 image with 1000 classes, GoogLeNet's known figure."""
    import benchmark

    assert benchmark.image_gflop(224, 1000) == pytest.approx(3.0, abs=0.01)
    assert benchmark.image_gflop(32, 10) == pytest.approx(0.0611, abs=1e-3)


def test_the_peers_a_cpu_user_picks_are_compared_when_installed(short_run):
    _, report = short_run
    assert report["machine"]["fp32_peak_gflops"] > 0
    engines = {engine["label"]: engine for engine in report["engines"]}
    peers = [label for label in ("torch", "torch layout=channels_last") if importlib.util.find_spec("torch")]
    peers += ["openvino"] if importlib.util.find_spec("openvino") else []
    assert [label for label in engines if label not in ("mindspore", "pipeline")] == peers
    assert all(engines[label]["status"] == "ok" for label in peers)
    speeds = {(row["task"], row["size"], row["engine"]): row["images_per_s"] for row in report["results"]}
    assert ("train", 32, "openvino") not in speeds and ("train.py", 32, "torch") not in speeds
    ratios = {(r["task"], r["size"]): r for r in report["ratios"] if r["engine"] == "mindspore"}
    for task in ("train", "infer"):
        candidates = {label: speeds[(task, 32, label)] for label in peers if (task, 32, label) in speeds}
        if not candidates:
            assert (task, 32) not in ratios
            continue
        best = max(candidates, key=candidates.get)
        assert ratios[(task, 32)]["peer"] == best
        assert ratios[(task, 32)]["ratio"] == pytest.approx(speeds[(task, 32, "mindspore")] / candidates[best],
                                                           rel=0.01)


def test_table_has_one_line_per_result(short_run):
    result, report = short_run
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task") and "images/s" in line)
    rows = lines[header + 1: header + 1 + len(report["results"])]
    for row, line in zip(report["results"], rows, strict=True):
        assert line.split()[:2] == [row["task"], str(row["size"])], line
    assert any(line.startswith("input pipeline (cifar10 32) / training step") for line in lines)


@pytest.mark.parametrize("args, fragment", [
    (["--engine", "tensorflow"], "unknown engine 'tensorflow'"),
    (["--sizes", "16"], "--sizes='16'"),
    (["--tasks", "train,predict"], "unknown task 'predict'"),
    (["--steps", "0"], "--steps=0"),
    (["--turn_warmup", "-1"], "--turn_warmup=-1"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, fragment):
    result = run_script("benchmark.py", "--short", *args, cwd=tmp_path, timeout=120)
    assert_user_error(result, 2, fragment)
    assert list(tmp_path.iterdir()) == []


def test_two_sizes_run_in_their_own_workers_and_report_each_engine_once(tmp_path):
    result = run_script("benchmark.py", "--short", "--sizes", "64,32", "--tasks", "infer", "--pipeline", "",
                        "--engine", "mindspore", "--json", "bench.json", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(engine["label"], engine["status"]) for engine in report["engines"]] == [("mindspore", "ok")]
    rows = {(row["task"], row["size"]): row for row in report["results"]}
    assert set(rows) == {("infer", 64), ("infer", 32)}
    assert all(row["images_per_s"] > 0 and row["compile_s"] is not None for row in rows.values())
