"""benchmarks/bench.py as users run it, on tiny settings: it builds its JPEGs, measures every
figure and writes them all, after each stage; timed steps leave out the warm-up steps. Speed
itself is never asserted: the figures of a tiny run on a shared machine mean nothing."""

import json
import sys

import cv2
import torch

from conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402

RATIOS = ("pipeline_vs_torchvision", "pipeline_vs_decode", "step_vs_fp32", "finder_vs_plain_loop",
          "end_to_end_vs_model_only")
ABSOLUTES = ("peak_rss_mb", "pipeline_ours_img_s", "pipeline_torchvision_img_s", "decode_img_s", "step_ours_img_s",
             "step_fp32_img_s", "finder_steps_s", "plain_loop_steps_s", "end_to_end_img_s", "model_only_img_s")


def test_quick_tiny_run_writes_every_figure_and_prints_the_table(tmp_path):
    out, work = tmp_path / "figures" / "bench.json", tmp_path / "work"
    # One thread each: on a 2-core runner shared with other tests, more only adds contention.
    proc = run_cli("benchmarks/bench.py", "--quick", "--tiny", "--json", out, "--workdir", work, timeout=300,
                   env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads(out.read_text())
    for key in RATIOS + ABSOLUTES:
        assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result.get(key))
    assert result["cpu"] and result["gpu"] is None
    assert result["machine"]["precision"] in ("bf16", "fp32") and result["machine"]["precision_reason"]
    assert set(result["targets"]) == set(RATIOS)
    assert all(len(result["samples"][key]["ours"]) == result["settings"][rounds] for key, rounds in
               (("pipeline_vs_torchvision", "pipeline_rounds"), ("step_vs_fp32", "step_rounds")))
    stages = ["pipeline", "step", "finder", "end_to_end", "rss"]  # compile only when asked for
    assert (result["stages"], result["stages_done"], result["stages_failed"], result["complete"]) == (
        stages, stages, {}, True)
    assert "step_compiled_img_s" not in result and "peak_gpu_memory_mb" not in result  # not measured: absent
    # tiny: 1 warm-up step, then 1 round of 2 timed steps at batch 2; the finder warms up with a 2-step sweep
    assert result["timing"]["step_vs_fp32"] == {"warmup_steps": 1, "timed_steps_per_round": 2, "rounds": 1,
                                                "batch": 2}
    assert result["timing"]["finder_vs_plain_loop"] == {"warmup_steps": 2, "timed_steps_per_round": 2,
                                                        "rounds": 1, "batch": 2}

    for label in ("input pipeline, per worker", "input pipeline vs the decode floor", "training step",
                  "finder overhead", "end to end", "peak RSS"):
        assert label in proc.stdout, label
    assert f"Precision: {result['machine']['precision']}" in proc.stdout

    jpegs = sorted((work / "data" / "train").rglob("*.JPEG"))
    assert len(jpegs) == result["settings"]["images"]
    assert cv2.imread(str(jpegs[0])).shape == (375, 500, 3)  # ImageNet-sized, from real photographs


def test_scale_tree_is_hard_links_and_a_worker_reads_the_index_without_copying(tmp_path):
    import os
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale import build_link_tree, worker_growth_mb

    from preprocess import build_datasets

    root = build_link_tree(tmp_path / "tree", classes=3, per_class=5, sources=2)
    files = sorted((root / "train").rglob("*.JPEG"))
    assert len(files) == 15 and sorted(os.listdir(root / "train")) == ["n00000000", "n00000001", "n00000002"]
    assert os.path.samefile(files[0], files[2])  # links to the same two JPEGs, in turn
    train, _ = build_datasets("imagenet1k", str(root), 32, need_val=False)
    assert 0 <= worker_growth_mb(train) < 10


class FakeRunner:
    """Stands in for StepRunner: records the calls; ``measure`` returns a fixed img/s per setup."""
    calls: list = []

    def __init__(self, setup):
        self.setup, self.model = setup, None
        self.name = "ours" if setup.amp_dtype is not None or setup.channels_last else "fp32"

    def warm_up(self, steps):
        FakeRunner.calls.append((self.name, "warm_up", steps))

    def measure(self, steps):
        FakeRunner.calls.append((self.name, "measure", steps))
        return {"ours": 30.0, "fp32": 10.0}[self.name]


def test_step_figures_warm_up_untimed_first_then_time_only_the_measured_steps(monkeypatch):
    monkeypatch.setattr(bench, "StepRunner", FakeRunner)
    FakeRunner.calls = []
    settings = bench.choose_settings(torch.device("cpu"), quick=True, tiny=False)
    figure = bench.measure_step(settings, torch.device("cpu"), "bf16")
    w, n, rounds = settings.step_warmup, settings.step_steps, settings.step_rounds
    assert (w, n, rounds) == (1, 2, 3)
    assert FakeRunner.calls == [("ours", "warm_up", w), ("fp32", "warm_up", w)] + \
        [("ours", "measure", n), ("fp32", "measure", n)] * rounds  # interleaved, after every warm-up
    assert (figure.ours, figure.against, figure.ratio) == ([30.0] * rounds, [10.0] * rounds, 3.0)

    FakeRunner.calls = []
    monkeypatch.setattr(torch, "compile", lambda model, backend: model)
    img_s, warmup_s = bench.measure_compiled_step(settings, torch.device("cpu"), "bf16", backend="eager")
    assert img_s == 30.0 and warmup_s >= 0
    assert FakeRunner.calls == [("ours", "warm_up", w + 2)] + [("ours", "measure", n)] * rounds
    assert bench.timing_record(settings)["step_compiled"] == {"warmup_steps": w + 2, "timed_steps_per_round": n,
                                                              "rounds": rounds, "batch": settings.step_batch}


def test_a_failing_compile_stage_keeps_the_figures_measured_before_it(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("benchmarks/bench.py", "--quick", "--tiny", "--stages", "step,compile", "--compile_backend",
                   "no_such_backend", "--json", out, timeout=300, env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    assert "error: stage(s) failed: compile" in proc.stderr
    result = json.loads(out.read_text())
    assert (result["stages"], result["stages_done"], result["complete"]) == (["step", "compile"], ["step"], False)
    assert list(result["stages_failed"]) == ["compile"] and "no_such_backend" in result["stages_failed"]["compile"]
    assert result["step_ours_img_s"] > 0 and result["step_fp32_img_s"] > 0 and "step_compiled_img_s" not in result
    assert "pipeline_ours_img_s" not in result and "peak_rss_mb" not in result  # stages not asked for


def test_unknown_stages_are_refused(capsys):
    assert bench.main(["--stages", "step,warp"]) == 2
    assert capsys.readouterr().err.startswith("error: --stages step,warp: unknown warp; choose from pipeline, ")
