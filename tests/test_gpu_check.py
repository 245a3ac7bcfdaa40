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


def test_a_failed_step_is_named_recorded_and_makes_the_exit_code_non_zero(tmp_path):
    proc = run_check(tmp_path, "--steps", "jpeg_tree,end_to_end", "--fail_step", "jpeg_tree", timeout=120)
    assert proc.returncode == 1
    assert "failed step(s): jpeg_tree, end_to_end" in proc.stderr  # end_to_end had no data: it ran and failed
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert [(s["name"], s["ok"]) for s in steps] == [("jpeg_tree", False), ("end_to_end", False)]
    assert "injected" in steps[0]["error"]
