"""benchmarks/gpu_check.sh as a user runs it: with --device cuda and no GPU it refuses in one line
before doing anything; with --device cpu --tiny every step runs (the CUDA tests' CPU twins
among them), is recorded in gpu_check.json as it ends, and --out holds only small files; a
failed or timed-out step is recorded and the next one runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

STEPS = ["cuda_tests", "bench", "jpeg_tree", "end_to_end", "train_resume", "compile"]
SCRIPT = str(REPO / "benchmarks" / "gpu_check.sh")


def run_check(out, work, *args, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run([SCRIPT, "--device", "cpu", "--tiny", "--use_current_env", "--out", str(out),
                           "--work", str(work), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_refused_in_one_line_before_anything_is_installed_or_made(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a wheel: never installed")
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([SCRIPT, "--use_current_env", "--wheels", str(wheels), "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2 and proc.stdout == ""
    cuda = torch.version.cuda or "none (a CPU-only build)"
    assert proc.stderr == (f"error: --device cuda: no CUDA device visible (torch {torch.__version__}, CUDA {cuda}); "
                           "run the check on the GPU machine, or pass --device cpu to run its steps on the CPU\n")
    assert not out.exists() and not work.exists()  # nothing made, the broken wheel never installed


def test_tiny_cpu_check_runs_every_step_records_each_and_keeps_out_small(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_check(out, work)
    assert proc.returncode == 0, proc.stderr[-3000:] + (out / "gpu_check.log").read_text()[-5000:]
    assert "torch " in proc.stdout and " CPUs" in proc.stdout and "OpenCV " in proc.stdout  # the machine line
    result = json.loads((out / "gpu_check.json").read_text())
    assert (result["device"], result["tiny"], result["complete"], result["running"]) == ("cpu", True, True, None)
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["gpu"] is None
    assert [step["name"] for step in result["steps"]] == STEPS
    assert all(step["ok"] is True and "error" not in step for step in result["steps"]), result["steps"]
    steps = {step["name"]: step for step in result["steps"]}

    tests = steps["cuda_tests"]  # the CPU twins of the CUDA tests, every one passed
    assert tests["counts"] == {"passed": 4, "deselected": 4}, tests["summary"]

    bench = steps["bench"]
    assert bench["step_ours_img_s"] > 0 and bench["step_fp32_img_s"] > 0 and bench["peak_rss_mb"] > 0
    assert bench["step_timing"] == {"warmup_steps": 1, "timed_steps_per_round": 2, "rounds": 1, "batch": 2}
    assert "peak_gpu_memory_mb" not in bench and "stages_failed" not in bench  # no GPU: no made-up figure

    assert {k: steps["jpeg_tree"][k] for k in ("images", "classes", "distinct", "val_images")} == {
        "images": 12, "classes": 3, "distinct": 12, "val_images": 6}

    e2e = steps["end_to_end"]  # one worker, 8 steps: the first 2 are warm-up, 6 timed from the progress bar
    assert e2e["timed_steps_by_workers"] == {"1": {"steps": 8, "warmup": 2, "timed": 6}}
    assert e2e["img_s_by_workers"]["1"] > 0 and e2e["whole_sweep_img_s_by_workers"]["1"] > 0
    cores_but_one = max(1, len(os.sched_getaffinity(0)) - 1)  # main.py's default on CUDA
    assert e2e["default_workers"] == cores_but_one
    assert isinstance(e2e["data_bound_at_default"], bool) if cores_but_one == 1 else e2e["data_bound_at_default"] is None
    assert set(e2e["ratio_by_workers"]) == {"1"}

    resume = steps["train_resume"]
    assert resume["resumed"] is True and resume["steps"] == 6
    assert 3 < resume["killed_at_step"] < 6  # killed inside epoch 2, then finished by --resume auto
    assert len(resume["train_img_s_by_epoch"]) == 2

    compiled = steps["compile"]
    assert compiled["compile_backend"] == "eager" and compiled["step_compiled_img_s"] > 0
    assert compiled["compiled_vs_eager"] > 0

    # --out: the three result files, small; the JPEGs and checkpoints went to --work
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert all(p.stat().st_size < 200_000 for p in out.iterdir())
    assert (work / "tree" / "imagenet" / "train").is_dir() and (work / "train" / "last.pt").is_file()
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | yes |" in table for name in STEPS)
    log = (out / "gpu_check.log").read_text()
    assert all(f"== {name}: ok in " in log for name in STEPS) and "$ python main.py --find_lr" in log


def test_a_failed_step_is_named_recorded_and_makes_the_exit_code_non_zero(tmp_path):
    proc = run_check(tmp_path / "out", tmp_path / "work", "--steps", "jpeg_tree,end_to_end",
                     "--fail_step", "jpeg_tree", timeout=120)
    assert proc.returncode == 1
    assert "failed step(s): jpeg_tree, end_to_end" in proc.stderr  # end_to_end had no data: it ran and failed
    steps = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]
    assert [(s["name"], s["ok"]) for s in steps] == [("jpeg_tree", False), ("end_to_end", False)]
    assert steps[0]["error"] == "failure injected by --fail_step"
    assert steps[1]["error"] == "RuntimeError: no JPEG tree: the jpeg_tree step did not run or failed"


def test_wheels_need_the_current_env_and_a_folder_that_holds_some(tmp_path):
    proc = subprocess.run([SCRIPT, "--wheels", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "--wheels goes with --use_current_env" in proc.stderr
    proc = subprocess.run([SCRIPT, "--use_current_env", "--wheels", str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --wheels {tmp_path}: no .whl files there; make them with benchmarks/gpu_wheels.sh"


# ---------------------------------------------------------- gpu_check.py's loop, with stand-in steps


def run_steps(monkeypatch, tmp_path, steps, *args) -> tuple[int, dict]:
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    out = tmp_path / "out"
    code = gpu_check.main(["--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work"), *args])
    return code, json.loads((out / "gpu_check.json").read_text())


def test_the_record_is_written_after_every_step(monkeypatch, tmp_path):
    def first(ctx, rec):
        rec["figure"] = 1

    def second(ctx, rec):  # what a crash now would leave on disk
        on_disk = json.loads((ctx.out / "gpu_check.json").read_text())
        rec.update(saw=[s["name"] for s in on_disk["steps"]], running=on_disk["running"],
                   complete=on_disk["complete"], table="| first | yes |" in (ctx.out / "gpu_check.md").read_text())

    code, result = run_steps(monkeypatch, tmp_path, [gpu_check.Step("first", first, 60),
                                                     gpu_check.Step("second", second, 60)])
    assert code == 0 and result["complete"] is True
    assert result["steps"][0]["figure"] == 1
    assert {k: result["steps"][1][k] for k in ("saw", "running", "complete", "table")} == {
        "saw": ["first"], "running": "second", "complete": False, "table": True}


def test_a_step_past_its_limit_is_killed_recorded_as_failed_and_the_next_runs(monkeypatch, tmp_path):
    pid_file = tmp_path / "child.pid"

    def hangs(ctx, rec):
        rec["before_the_hang"] = 7
        gpu_check.run_child(ctx, ["-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                        "print('child started', flush=True); time.sleep(120)"])

    def after(ctx, rec):
        rec["ran"] = True

    code, result = run_steps(monkeypatch, tmp_path, [gpu_check.Step("hangs", hangs, 2),
                                                     gpu_check.Step("after", after, 60)])
    assert code == 1
    assert [(s["name"], s["ok"]) for s in result["steps"]] == [("hangs", False), ("after", True)]
    assert result["steps"][0]["error"] == "timed out after 2 s" and result["steps"][0]["before_the_hang"] == 7
    assert result["steps"][1]["ran"] is True
    with pytest.raises(ProcessLookupError):  # the child was killed (and reaped)
        os.kill(int(pid_file.read_text()), 0)
    assert "child started" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_a_step_the_budget_leaves_no_time_for_is_not_started(monkeypatch, tmp_path):
    def hangs(ctx, rec):
        gpu_check.run_child(ctx, ["-c", "import time; time.sleep(120)"])

    def never(ctx, rec):
        raise AssertionError("started without time left")

    code, result = run_steps(monkeypatch, tmp_path, [gpu_check.Step("hangs", hangs, 1),
                                                     gpu_check.Step("never", never, 60)], "--budget", "10")
    assert code == 1
    assert result["steps"][1]["ok"] is False and result["steps"][1]["error"].startswith("not run: ")
    assert result["steps"][1]["error"].endswith(" s left of the 10 s budget")


def test_work_inside_out_is_refused(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 2
    assert "is inside --out" in capsys.readouterr().err and not any(Path(tmp_path).iterdir())


def test_steady_img_s_times_the_steps_after_the_warm_up_from_the_first_one_shown():
    marks = {1: 10.0, 3: 11.0, 5: 12.0, 8: 14.0}  # step -> when the progress bar showed it; 2 and 4 not shown
    assert gpu_check.steady_img_s(marks, warmup=2, last=8, batch=4) == (6.7, 5)  # steps 4-8: 20 images in 3 s
    assert gpu_check.steady_img_s(marks, warmup=4, last=8, batch=4) == (6.0, 3)  # steps 6-8: 12 images in 2 s
    assert gpu_check.steady_img_s({1: 1.0}, warmup=2, last=8, batch=4) == (None, 0)
    assert gpu_check.steady_img_s(marks, warmup=2, last=9, batch=4) == (None, 0)  # the last step never shown
