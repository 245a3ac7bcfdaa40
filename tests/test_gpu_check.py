"""benchmarks/gpu_check.sh as a user runs it, with --device cpu --tiny on this test's Python:
every step recorded in gpu_check.json, and a failed step makes the exit code non-zero."""

import json
import os
import subprocess
import sys

from conftest import REPO

STEPS = ["cuda_tests", "bench", "jpeg_tree", "end_to_end", "train_resume"]


def run_check(out, *args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--use_current_env", "--out", str(out), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_tiny_cpu_check_runs_every_step_and_records_its_figures(tmp_path):
    proc = run_check(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch " in proc.stdout and " CPUs" in proc.stdout  # the machine line
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (result["device"], result["tiny"]) == ("cpu", True)
    assert [step["name"] for step in result["steps"]] == STEPS
    assert all(step["ok"] is True and isinstance(step["seconds"], float) for step in result["steps"]), result["steps"]
    steps = {step["name"]: step for step in result["steps"]}
    summary = steps["cuda_tests"]["summary"]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary  # no CUDA here: all skip
    assert steps["bench"]["step_ours_img_s"] > 0 and steps["bench"]["step_fp32_img_s"] > 0
    assert steps["bench"]["peak_gpu_memory_mb"] is None  # no GPU: no made-up figure
    assert steps["jpeg_tree"] == {"name": "jpeg_tree", "ok": True, "images": 12, "classes": 3,
                                  "seconds": steps["jpeg_tree"]["seconds"]}
    assert steps["end_to_end"]["img_s_by_workers"]["1"] > 0
    assert isinstance(steps["end_to_end"]["data_bound_at_default"], bool)
    resume = steps["train_resume"]
    assert resume["resumed"] is True and resume["steps"] == 6
    assert 3 < resume["killed_at_step"] < 6  # killed inside epoch 2, then finished by --resume auto
    assert len(resume["train_img_s_by_epoch"]) == 2
    assert "| train_resume | yes |" in (tmp_path / "gpu_check.md").read_text()


def test_a_failed_step_is_named_recorded_and_makes_the_exit_code_non_zero(tmp_path):
    proc = run_check(tmp_path, "--steps", "jpeg_tree,end_to_end", "--fail_step", "jpeg_tree", timeout=120)
    assert proc.returncode == 1
    assert "failed step(s): jpeg_tree, end_to_end" in proc.stderr  # end_to_end had no data: it ran and failed
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert [(s["name"], s["ok"]) for s in steps] == [("jpeg_tree", False), ("end_to_end", False)]
    assert "injected" in steps[0]["error"]


def test_wheels_need_the_current_env_and_a_folder_that_holds_some(tmp_path):
    script = str(REPO / "benchmarks" / "gpu_check.sh")
    proc = subprocess.run([script, "--wheels", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "--wheels goes with --use_current_env" in proc.stderr
    proc = subprocess.run([script, "--use_current_env", "--wheels", str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --wheels {tmp_path}: no .whl files there; make them with benchmarks/gpu_wheels.sh"
