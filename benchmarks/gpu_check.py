"""The steps of the GPU check (benchmarks/gpu_check.sh prepares the environment, then runs this):
the CUDA tests, bench.py's figures, a JPEG tree, main.py --find_lr fed by more and more loader
workers, a checkpointed training run killed (SIGKILL) in its second epoch and finished with
--resume auto, and torch.compile's training step, last.

Each step runs under its own time limit, and all of them under one --budget; a step that fails
or runs out of time is recorded and the next one runs. gpu_check.json, gpu_check.md and
gpu_check.log (each step's output, cut to its head and tail) are rewritten in --out after every
step, so a crash or a time-out later loses nothing; bulky work (JPEGs, checkpoints) goes to
--work. The exit code is 1 if any step failed, 2 for a usage error or, with --device cuda, when
no usable CUDA device is visible (said in one line, before anything is built).

    python benchmarks/gpu_check.py --device cuda --out ./outputs/gpu_check
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/check    # the same steps, small
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from atomic_io import atomic_write_json, atomic_write_text  # noqa: E402  (standard library only)

BUDGET_S = 330  # all steps together on one H100 with 16 cores: ~5 min expected, plus gpu_check.sh's ~15 s
TINY_BUDGET_S = 3600  # --tiny on a shared 2-core CPU: the time limits only stop a hung step
TINY_LIMIT_S = 900
MIN_STEP_S = 10  # a step given less than this is not started
LOG_HEAD, LOG_TAIL = 6_000, 24_000  # characters of each step's output kept in gpu_check.log (~180 KB at most)
LR_FLAGS = ["--lr_start", "1e-5", "--lr_end", "1e-2", "--lr_diverge_th", "1e9", "--seed", "0"]  # no early stop
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}  # live output; no network look-up


class StepTimeout(Exception):
    pass


# ------------------------------------------------------------------- the device and the machine


def device_problem(device: str) -> str | None:
    """One line saying why --device cuda cannot run here, or None. Seconds: torch's import and a
    one-element CUDA operation."""
    if device != "cuda":
        return None
    advice = "run the check on the GPU machine, or pass --device cpu to run its steps on the CPU"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return f"error: --device cuda: {sys.executable} cannot import torch ({type(exc).__name__}: {exc})"
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (a CPU-only build)'}"
    with warnings.catch_warnings(record=True) as caught:  # e.g. "the NVIDIA driver on your system is too old"
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        why = "".join(f"; {str(w.message).strip().splitlines()[0]}" for w in caught[:1] if str(w.message).strip())
        return f"error: --device cuda: no CUDA device visible ({versions}{why}); {advice}"
    try:
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"error: --device cuda: a CUDA device is visible but unusable ({versions}): {first}; {advice}"
    return None


def machine_facts(device: str) -> dict:
    import cv2
    import torch

    cuda = device == "cuda"
    driver = ""
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True)
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else ""
    gpu = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "opencv": cv2.__version__,
            "driver": driver or None, "gpu": gpu, "gpu_count": torch.cuda.device_count() if cuda else 0,
            "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0))}


def machine_line(m: dict) -> str:
    return (f"python {m['python']}, torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, OpenCV {m['opencv']}, "
            f"driver {m['driver'] or 'none'}, GPU {m['gpu'] or 'none'}, {m['cpus']} CPUs")


def default_workers() -> int:
    """The loader workers main.py picks on CUDA when --num_workers is not given (every CPU but one):
    the data_bound_at_default figure is about it."""
    import torch

    from preprocess import default_num_workers

    return default_num_workers(None, torch.device("cuda"))


def sizes(tiny: bool) -> dict:
    """What each step works on. The full sizes are meant for one H100 or H200 and 16 cores:
    1000 classes (main.py's model and head as for ImageNet), 21,000 training JPEGs (300 real
    ones, the rest hard links), enough for the longest range test (5 batches per worker)."""
    if tiny:
        return {"classes": 3, "distinct": 12, "per_class": 4, "val_per_class": 2, "batch": 4, "input_size": 32,
                "workers": [1], "lr_iter": {1: 8}, "warmup": {1: 2}, "train_samples": 12, "checkpoint_every": 1,
                "train_workers": 1}
    usable = len(os.sched_getaffinity(0))
    # 4 (a common fixed choice), 8, and main.py's default on CUDA: all but one core (the main process feeds the GPU)
    workers = sorted({w for w in (4, 8, default_workers()) if 1 <= w <= max(usable - 1, 1)})
    # steady state: the first round of batches (one per worker, arriving together) is warm-up; the next
    # four rounds are timed, all within one pass over the tree (21 images a class for 15 workers)
    lr_iter = {w: max(20, 5 * w) for w in workers}
    return {"classes": 1000, "distinct": 300, "per_class": max(20, -(-max(lr_iter.values()) * 256 // 1000) + 1),
            "val_per_class": 2, "batch": 256, "input_size": 224, "workers": workers,
            "lr_iter": lr_iter, "warmup": {w: max(4, w) for w in workers},
            # 16 steps an epoch: the kill at step 20 leaves 12 steps (and a validation) of margin for
            # the checkpoint to be read before the run could end by itself
            "train_samples": 256 * 16, "checkpoint_every": 4, "train_workers": workers[-1]}


# ----------------------------------------------------------------------- running children


@dataclass
class ChildResult:
    returncode: int
    output: str
    marks: dict[int, float]  # progress-bar step -> when the parent first read it (perf_counter)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_child(ctx, args: list, ok_codes=(0,), progress_total: int | None = None,
              kill_when: Callable[[], bool] | None = None) -> ChildResult:
    """``python ARGS`` in the repository, in its own process group (killed whole if the step
    times out), output kept for gpu_check.log. ``progress_total``: note when each ``k/TOTAL``
    of the range test's progress bar arrives. ``kill_when``: polled, SIGKILLs the child when true."""
    command = [sys.executable, *map(str, args)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **CHILD_ENV})
    chunks: list[bytes] = []
    marks: dict[int, float] = {}
    pattern = re.compile(rb"(\d+)/%d \[" % progress_total) if progress_total else None

    def read() -> None:
        tail = b""
        while data := os.read(proc.stdout.fileno(), 1 << 16):
            now = time.perf_counter()
            chunks.append(data)
            if pattern:
                for match in pattern.finditer(tail + data):
                    marks.setdefault(int(match.group(1)), now)
                tail = data[-32:]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                proc.send_signal(signal.SIGKILL)  # as a crash or the OOM killer would
                break
            time.sleep(0.05)
        proc.wait()
    finally:
        kill_group(proc)  # the loader workers too, whatever happened
        proc.wait()
        reader.join(timeout=5)
        output = b"".join(chunks).decode(errors="replace")
        ctx.log_child(command, output, proc.returncode)
    if proc.returncode not in ok_codes:
        last = (output.strip().splitlines() or ["(no output)"])[-1].strip()
        raise RuntimeError(f"{' '.join(map(str, args[:2]))} exited {proc.returncode}: {last[-500:]}")
    return ChildResult(proc.returncode, output, marks)


def steady_img_s(marks: dict[int, float], warmup: int, last: int, batch: int) -> tuple[float | None, int]:
    """Images per second from the end of step ``warmup`` to the end of step ``last``, and the
    steps timed, as the progress bar showed them. The bar redraws at most ten times a second, so
    it may skip a step: the first it showed from ``warmup`` on starts the timing. (None, 0) when
    the bar did not show two such steps."""
    shown = sorted(step for step in marks if warmup <= step <= last)
    if len(shown) < 2 or shown[-1] != last or marks[last] <= marks[shown[0]]:
        return None, 0
    return round((last - shown[0]) * batch / (marks[last] - marks[shown[0]]), 1), last - shown[0]


# ------------------------------------------------------------------------------ the steps
# Times: expected on one H100 with 16 cores (ResNet-50 bf16 + channels_last at 224 px: ~2,500-3,500
# img/s; JPEG decode + augmentation: ~100-400 img/s per core); each limit is about twice that.


def step_tests(ctx, rec: dict) -> None:
    """~25 s: pytest's start, CUDA's, four small tests (ResNet-50 at 32 px). On --device cuda the
    cuda-marked tests; on --device cpu their CPU twins. Every one must pass: a skip is a failure."""
    marker = "cuda" if ctx.device == "cuda" else "not cuda"
    # -o addopts=: the project's own pytest options (pytest-xdist's workers) are not needed for four
    # tests, and the GPU image, given only gpu_wheels.sh's wheels, need not have pytest-xdist
    child = run_child(ctx, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", marker,
                            "tests/test_cuda.py"],
                      ok_codes=(0, 1, 2, 5))
    lines = [line for line in child.output.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    rec["summary"] = summary = lines[-1].strip("= ") if lines else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", summary)}
    rec["counts"] = counts
    bad = {k: v for k, v in counts.items() if k not in ("passed", "deselected", "warning", "warnings")}
    if child.returncode != 0 or not counts.get("passed") or bad:
        raise RuntimeError(f"pytest -m '{marker}': {summary or 'no summary'}: every test must pass, none skipped")


def step_bench(ctx, rec: dict) -> None:
    """~70 s: bench.py --quick at batch 256, 224 px: the per-worker input pipeline (384 JPEGs x 3
    passes, ~15 s), the training step in bf16 + channels_last and in fp32 (3 warm-up + 15 timed steps
    each, ~15 s), the finder against a plain loop (~15 s), the finder's peak RSS (~12 s), start-up
    and JPEGs ~10 s. Its end-to-end figure is the end_to_end step's, its compiled step the compile step's."""
    out = ctx.work / "bench.json"
    out.unlink(missing_ok=True)
    try:
        run_child(ctx, ["benchmarks/bench.py", "--device", ctx.device, "--quick", *(["--tiny"] if ctx.tiny else []),
                        "--stages", "pipeline,step,finder,rss", "--json", out, "--workdir", ctx.fresh("bench")])
    finally:  # what bench.py wrote before a failure or a time-out still counts
        figures = json.loads(out.read_text()) if out.exists() else {}
        ctx.model_img_s = figures.get("step_ours_img_s")
        rec.update({key: figures[key] for key in (
            "step_ours_img_s", "step_fp32_img_s", "step_vs_fp32", "finder_vs_plain_loop", "pipeline_ours_img_s",
            "pipeline_torchvision_img_s", "decode_img_s", "peak_rss_mb", "peak_gpu_memory_mb") if key in figures})
        if figures:
            rec["precision"] = figures["machine"]["precision"]
            rec["step_timing"] = figures["timing"]["step_vs_fp32"]
            if figures.get("stages_failed"):
                rec["stages_failed"] = figures["stages_failed"]


def step_data(ctx, rec: dict) -> None:
    """~5 s: 300 JPEGs of 500x375 made from real photographs, and 23,000 hard links to them."""
    from jpegs import write_jpeg_folder

    size, root = ctx.size, ctx.fresh("tree")
    source = write_jpeg_folder(root / "distinct", count=size["distinct"], classes=1)
    files = sorted((source / "train").rglob("*.JPEG"))
    data = root / "imagenet"
    for split, count in (("train", size["per_class"]), ("val", size["val_per_class"])):
        for k in range(size["classes"]):
            folder = data / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                os.link(files[(k * count + i) % len(files)], folder / f"{k:04d}_{i:03d}.JPEG")
    ctx.data = data
    rec.update(images=size["classes"] * size["per_class"], classes=size["classes"], distinct=size["distinct"],
               val_images=size["classes"] * size["val_per_class"])


def common_flags(ctx) -> list[str]:
    if ctx.data is None:
        raise RuntimeError("no JPEG tree: the jpeg_tree step did not run or failed")
    flags = ["--data_dir", str(ctx.data), "--batch_size", str(ctx.size["batch"]),
             "--input_size", str(ctx.size["input_size"])]
    if ctx.tiny:  # the code paths, not ResNet-50's speed: a smaller model rehearses them in a third of the time
        flags += ["--arch", "resnet18"]
    return flags + (["--no_cuda", "--precision", "fp32"] if ctx.device == "cpu" else [])


def step_end_to_end(ctx, rec: dict) -> None:
    """~60 s: main.py --find_lr with 4 workers, 8 and main.py's default on CUDA, cores-1 (15): each run
    ~12 s of start-up and ~10 s of range test (5 batches per worker; the first round is warm-up).
    img/s counts the steady steps only, timed from the progress bar."""
    size = ctx.size
    rec.update(img_s_by_workers={}, whole_sweep_img_s_by_workers={}, timed_steps_by_workers={},
               model_only_img_s=ctx.model_img_s)
    unshown = []
    for workers in size["workers"]:
        lr_iter, warmup = size["lr_iter"][workers], size["warmup"][workers]
        folder = ctx.fresh(f"find_lr_w{workers}")
        child = run_child(ctx, ["main.py", "--find_lr", *common_flags(ctx), "--lr_iter", lr_iter, *LR_FLAGS,
                                "--num_workers", workers, "--no_plots", "--lr_plot", folder / "lr.png"],
                          ok_codes=(0, 2), progress_total=lr_iter)  # 2: too short a sweep to suggest a rate
        result = json.loads((folder / "suggested_lr.json").read_text())["sweep"]
        steps = result["steps_run"]
        img_s, timed = steady_img_s(child.marks, warmup, steps, size["batch"])
        rec["img_s_by_workers"][str(workers)] = img_s
        rec["whole_sweep_img_s_by_workers"][str(workers)] = result["images_per_second"]
        rec["timed_steps_by_workers"][str(workers)] = {"steps": steps, "warmup": steps - timed, "timed": timed}
        if img_s is None:
            unshown.append(str(workers))
    default = default_workers()
    rec["default_workers"] = default
    if ctx.model_img_s:
        ratios = {w: round(v / ctx.model_img_s, 3) for w, v in rec["img_s_by_workers"].items() if v}
        fed = [int(w) for w, r in ratios.items() if r >= 0.9]
        rec.update(ratio_by_workers=ratios,
                   data_bound_at_default=ratios[str(default)] < 0.9 if str(default) in ratios else None,
                   fed_from_workers=min(fed) if fed else None)
    if unshown:
        raise RuntimeError(f"with {', '.join(unshown)} workers the progress bar did not show the steps after the "
                           "warm-up: no steady img/s (the whole sweep's is in whole_sweep_img_s_by_workers)")


def last_checkpoint_step(path: Path, steps_per_epoch: int) -> int:
    """Steps done as recorded in ``last.pt`` (its epoch counts finished epochs); -1 while it is absent."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, OSError):
        return -1
    return state["epoch"] * steps_per_epoch + state["step_in_epoch"]


def step_resume(ctx, rec: dict) -> None:
    """~50 s: two epochs of 16 steps (batch 256, 15 workers), a checkpoint every 4 steps, SIGKILL
    once step 20's is written, then --resume auto to the end (two start-ups, ~12 s each)."""
    size, out = ctx.size, ctx.fresh("train")
    steps_per_epoch = size["train_samples"] // size["batch"]
    flags = [*common_flags(ctx), "--epochs", "2", "--max_samples", size["train_samples"], "--lr", "0.01",
             "--num_workers", size["train_workers"], "--output_dir", out, "--checkpoint_every", size["checkpoint_every"]]
    kill_at = steps_per_epoch + size["checkpoint_every"]  # inside epoch 2, so the kill loses a partial epoch
    seen = {"stamp": None, "step": -1}

    def checkpoint_reached() -> bool:
        path = out / "last.pt"
        stamp = path.stat().st_mtime_ns if path.exists() else None
        if stamp != seen["stamp"]:  # read a checkpoint (hundreds of MB) only when it changed
            seen["step"] = last_checkpoint_step(path, steps_per_epoch)
            seen["stamp"] = stamp if seen["step"] >= 0 else None  # a failed read is tried again
        return seen["step"] >= kill_at

    killed = run_child(ctx, ["main.py", *flags], ok_codes=(0, -signal.SIGKILL), kill_when=checkpoint_reached)
    if killed.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the run to be killed ended by itself (exit {killed.returncode}) before step {kill_at}")
    rec["killed_at_step"] = seen["step"]
    resumed = run_child(ctx, ["main.py", *flags, "--resume", "auto"])
    if "Resuming from" not in resumed.output:
        raise RuntimeError("--resume auto did not resume from the checkpoint")
    import csv

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    if [int(r["epoch"]) for r in rows] != [1, 2]:
        raise RuntimeError(f"metrics.csv after the resume lists epochs {[r['epoch'] for r in rows]}, not [1, 2]")
    rec.update(resumed=True, steps=2 * steps_per_epoch,
               train_img_s_by_epoch=[float(r["images_per_second"]) for r in rows])


def step_compile(ctx, rec: dict) -> None:
    """~90 s: torch.compile (inductor) of the bf16 + channels_last training step at batch 256:
    compiling, in the untimed warm-up, is most of it; then 3 x 5 timed steps. Last, since it is
    the longest and the most likely to fail; with --tiny, the 'eager' backend (capture only)."""
    out = ctx.work / "compile.json"
    out.unlink(missing_ok=True)
    try:
        run_child(ctx, ["benchmarks/bench.py", "--device", ctx.device, "--quick", *(["--tiny"] if ctx.tiny else []),
                        "--stages", "compile", "--compile_backend", "eager" if ctx.tiny else "inductor",
                        "--json", out])
    finally:
        figures = json.loads(out.read_text()) if out.exists() else {}
        rec.update({key: figures[key] for key in ("step_compiled_img_s", "compile_warmup_s", "compile_backend",
                                                  "peak_gpu_memory_mb") if key in figures})
        if figures.get("step_compiled_img_s") and ctx.model_img_s:
            rec["compiled_vs_eager"] = round(figures["step_compiled_img_s"] / ctx.model_img_s, 3)
        if figures.get("stages_failed"):
            rec["stages_failed"] = figures["stages_failed"]


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable
    limit_s: float  # on one H100 with 16 cores; see each step's docstring for the expected time


STEPS = [Step("cuda_tests", step_tests, 60), Step("bench", step_bench, 120), Step("jpeg_tree", step_data, 45),
         Step("end_to_end", step_end_to_end, 120), Step("train_resume", step_resume, 100),
         Step("compile", step_compile, 150)]


# --------------------------------------------------------------------------- the record


class Context:
    """What the steps share: settings, the work folder, the figures later steps use, the log."""

    def __init__(self, args, out: Path, work: Path):
        self.device, self.tiny, self.out, self.work = args.device, args.tiny, out, work
        self.size = sizes(args.tiny)
        self.model_img_s = None
        self.data = None
        self.log_parts: list[str] = []

    def fresh(self, name: str) -> Path:
        """An empty folder for this step's work (what an earlier run left there is removed)."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def log_child(self, command: list[str], output: str, code) -> None:
        output = re.sub(r"\r+\n?", "\n", output)  # each redraw of a progress bar on a line of its own
        if len(output) > LOG_HEAD + LOG_TAIL:
            output = (output[:LOG_HEAD] + f"\n[... {len(output) - LOG_HEAD - LOG_TAIL} characters cut ...]\n"
                      + output[-LOG_TAIL:])
        shown = " ".join(str(c) for c in command[1:])
        self.log_parts.append(f"$ python {shown}\n{output.rstrip()}\n[exit {code}]\n")

    def step_log(self) -> str:
        """This step's children's logs, cut together to one step's share of gpu_check.log."""
        text, self.log_parts = "".join(self.log_parts), []
        if len(text) > LOG_HEAD + LOG_TAIL:
            text = text[:LOG_HEAD] + "\n[... cut ...]\n" + text[-LOG_TAIL:]
        return text


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['device']}{', tiny' if result['tiny'] else ''})", "",
             machine_line(result["machine"]), "",
             "| step | ok | seconds | limit | figures |", "|---|---|---|---|---|"]
    for step in result["steps"]:
        figures = {k: v for k, v in step.items() if k not in ("name", "ok", "seconds", "limit_s")}
        lines.append(f"| {step['name']} | {'yes' if step['ok'] else 'NO'} | {step['seconds']} | {step['limit_s']} | "
                     f"{json.dumps(figures)} |")
    if result["running"]:
        lines.append(f"| {result['running']} | running | | | |")
    return "\n".join(lines) + "\n"


def save(out: Path, result: dict, log: list[str]) -> None:
    atomic_write_json(out / "gpu_check.json", result)
    atomic_write_text(out / "gpu_check.md", markdown(result))
    atomic_write_text(out / "gpu_check.log", "".join(log))


def run_step(step: Step, ctx, limit: float) -> dict:
    """The step under a SIGALRM time limit; its record, failed or not."""
    rec: dict = {}

    def expire(signum, frame):
        raise StepTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        step.run(ctx, rec)
        return {"ok": True, **rec}
    except StepTimeout:
        return {"ok": False, **rec, "error": f"timed out after {limit:.0f} s"}
    except Exception as exc:  # noqa: BLE001 - recorded; the next step runs
        return {"ok": False, **rec, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [step.name for step in STEPS]
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the steps run (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="small sizes, for a CPU test")
    parser.add_argument("--out", default=os.environ.get("OUT") or "./outputs/gpu_check",
                        help="folder for gpu_check.json, .md and .log only (default $OUT, else ./outputs/gpu_check)")
    parser.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR") or "/tmp", "gpu_check_work"),
                        help="folder for the bulky work: JPEGs, checkpoints (default $TMPDIR/gpu_check_work)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all steps together (default {BUDGET_S}; {TINY_BUDGET_S} with --tiny); "
                             "a step gets its own limit or what is left, whichever is less")
    parser.add_argument("--steps", default=",".join(names), help="comma-separated steps to run (default: all)")
    parser.add_argument("--fail_step", default=None, choices=names, help="make this step fail (tests the check)")
    parser.add_argument("--preflight", action="store_true",
                        help="only check the arguments and, with --device cuda, the device; print nothing if fine")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    chosen = [name for name in args.steps.split(",") if name]
    unknown = [name for name in chosen if name not in {step.name for step in STEPS}]
    if unknown or not chosen:
        print(f"error: --steps: unknown {', '.join(unknown) or '(none)'}; choose from "
              f"{', '.join(step.name for step in STEPS)}", file=sys.stderr)
        return 2
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    if work == out or out in work.parents:
        print(f"error: --work {work} is inside --out {out}: --out is for the small result files only", file=sys.stderr)
        return 2
    problem = device_problem(args.device)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.preflight:
        return 0

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, out, work)
    machine = machine_facts(args.device)
    print(machine_line(machine), flush=True)
    budget = args.budget if args.budget is not None else TINY_BUDGET_S if args.tiny else BUDGET_S
    result = {"device": args.device, "tiny": args.tiny, "machine": machine, "budget_s": budget, "work": str(work),
              "steps": [], "running": None, "complete": False}
    log = [machine_line(machine) + "\n"]
    save(out, result, log)
    deadline = time.monotonic() + budget
    for step in STEPS:
        if step.name not in chosen:
            continue
        own, left = TINY_LIMIT_S if args.tiny else step.limit_s, deadline - time.monotonic()
        limit = min(own, left)
        started = time.perf_counter()
        if left < min(own, MIN_STEP_S):
            record = {"ok": False, "error": f"not run: {max(left, 0):.0f} s left of the {budget:.0f} s budget"}
        elif step.name == args.fail_step:
            record = {"ok": False, "error": "failure injected by --fail_step"}
        else:
            print(f"== {step.name} (at most {limit:.0f} s)", flush=True)
            result["running"] = step.name
            save(out, result, log)
            record = run_step(step, ctx, limit)
        entry = {"name": step.name, **record, "seconds": round(time.perf_counter() - started, 1),
                 "limit_s": round(max(limit, 0))}
        result["steps"].append(entry)
        result["running"] = None
        log.append(f"\n== {step.name}: {'ok' if record['ok'] else 'FAILED'} in {entry['seconds']} s\n"
                   + ctx.step_log())
        save(out, result, log)
        figures = {k: v for k, v in entry.items() if k not in ("name", "ok", "error")}
        print(f"{step.name}: {'ok' if record['ok'] else 'FAILED'} {json.dumps(figures)}", flush=True)
        if not record["ok"]:
            print(f"step {step.name} failed: {record['error']}", file=sys.stderr, flush=True)
    result["complete"] = True
    save(out, result, log)
    failed = [s["name"] for s in result["steps"] if not s["ok"]]
    print(f"Wrote {out / 'gpu_check.json'}, gpu_check.md and gpu_check.log")
    if failed:
        print(f"error: failed step(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
