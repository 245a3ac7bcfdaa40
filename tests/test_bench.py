"""benchmarks/bench.py as users run it, on tiny settings: it builds its JPEGs, measures every
figure and writes them all. Speed itself is never asserted: the figures of a tiny run on a
shared machine mean nothing."""

import json

import cv2

from conftest import run_cli

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
    from preprocess import build_datasets
    from scale import build_link_tree, worker_growth_mb

    root = build_link_tree(tmp_path / "tree", classes=3, per_class=5, sources=2)
    files = sorted((root / "train").rglob("*.JPEG"))
    assert len(files) == 15 and sorted(os.listdir(root / "train")) == ["n00000000", "n00000001", "n00000002"]
    assert os.path.samefile(files[0], files[2])  # links to the same two JPEGs, in turn
    train, _ = build_datasets("imagenet1k", str(root), 32, need_val=False)
    assert 0 <= worker_growth_mb(train) < 10
