"""The steps of the GPU check (benchmarks/gpu_check.sh prepares the environment, then runs this):
CUDA-marked tests, bench.py figures, main.py --find_lr over worker counts, a checkpointed training
run killed (SIGKILL) in its second epoch and finished with --resume auto. Each step is recorded and
the next one runs even if one failed; gpu_check.json / gpu_check.md list every step, and the exit
code is 1 if any failed.

    python benchmarks/gpu_check.py --device cuda --out ./outputs/gpu_check
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/check    # the same steps, small
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from jpegs import write_jpeg_folder  # noqa: E402
from report import atomic_write_json, atomic_write_text  # noqa: E402


def sizes(device: str, tiny: bool) -> dict:
    if tiny:
        return {"classes": 3, "distinct": 12, "per_class": 4, "batch": 4, "input_size": 32, "lr_iter": 8,
                "workers": [1], "train_samples": 12, "checkpoint_every": 1}
    cores = os.cpu_count() or 4
    return {"classes": 1000, "distinct": 300, "per_class": 64, "batch": 256, "input_size": 224, "lr_iter": 60,
            "workers": sorted({w for w in (4, 8, 12, cores) if w <= cores} or {cores}),
            "train_samples": 256 * 20, "checkpoint_every": 5}


def run(args: list[str], timeout: float, ok_codes=(0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode not in ok_codes:
        last = (proc.stderr.strip() or proc.stdout.strip() or "(no output)").splitlines()[-1]
        raise RuntimeError(f"{args[0]} {args[1] if args[0] == '-m' else ''} exited {proc.returncode}: {last}")
    return proc


def build_tree(root: Path, size: dict) -> Path:
    """``classes`` x ``per_class`` JPEGs: ``distinct`` real ones, the rest hard links to them."""
    source = write_jpeg_folder(root / "distinct", count=size["distinct"], classes=1)
    files = sorted((source / "train").rglob("*.JPEG"))
    data = root / "imagenet"
    for split, count in (("train", size["per_class"]), ("val", 2)):
        for k in range(size["classes"]):
            folder = data / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                target = folder / f"{k:04d}_{i:03d}.JPEG"
                if not target.exists():
                    os.link(files[(k * count + i) % len(files)], target)
    return data


def step_tests(ctx) -> dict:
    proc = run(["-m", "pytest", "-q", "-m", "cuda", "tests"], timeout=300, ok_codes=(0, 5))  # 5: none collected
    return {"summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}


def step_bench(ctx) -> dict:
    out = ctx.work / "bench.json"
    flags = ["--tiny", "--quick"] if ctx.tiny else ["--quick", "--compile"]
    run(["benchmarks/bench.py", "--device", ctx.device, *flags, "--json", str(out), "--workdir",
         str(ctx.work / "bench")], timeout=400)
    figures = json.loads(out.read_text())
    ctx.model_img_s = figures.get("step_ours_img_s")
    return {key: figures.get(key) for key in ("step_fp32_img_s", "step_ours_img_s", "step_compiled_img_s",
                                              "finder_vs_plain_loop", "peak_gpu_memory_mb", "peak_rss_mb")}


def step_data(ctx) -> dict:
    ctx.data = build_tree(ctx.work / "tree", ctx.size)
    return {"images": ctx.size["classes"] * ctx.size["per_class"], "classes": ctx.size["classes"]}


def common_flags(ctx) -> list[str]:
    flags = ["--data_dir", str(ctx.data), "--batch_size", str(ctx.size["batch"]),
             "--input_size", str(ctx.size["input_size"]), "--no_plots"]
    return flags + (["--no_cuda", "--precision", "fp32"] if ctx.device == "cpu" else [])


def step_end_to_end(ctx) -> dict:
    by_workers = {}
    for workers in ctx.size["workers"]:
        folder = ctx.work / f"find_lr_w{workers}"
        run(["main.py", "--find_lr", *common_flags(ctx), "--lr_iter", str(ctx.size["lr_iter"]),
             "--num_workers", str(workers), "--lr_plot", str(folder / "lr.png")], timeout=400)
        by_workers[str(workers)] = json.loads((folder / "suggested_lr.json").read_text())["images_per_second"]
    figures = {"img_s_by_workers": by_workers, "model_only_img_s": ctx.model_img_s}
    if ctx.model_img_s:
        ratios = {w: round(v / ctx.model_img_s, 3) for w, v in by_workers.items() if v}
        fed = [w for w, r in ratios.items() if r >= 0.9]
        figures.update(ratio_by_workers=ratios, data_bound_at_default=ratios.get(str(ctx.size["workers"][0]), 0) < 0.9,
                       fed_from_workers=int(fed[0]) if fed else None)
    return figures


def last_checkpoint_step(path: Path, steps_per_epoch: int) -> int:
    """Steps done as recorded in ``last.pt`` (its epoch counts finished epochs); -1 while it is absent."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, OSError):
        return -1
    return state["epoch"] * steps_per_epoch + state["step_in_epoch"]


def step_resume(ctx) -> dict:
    """Two epochs, SIGKILLed once a mid-run checkpoint exists, then ``--resume auto`` to the end."""
    out, size = ctx.work / "train", ctx.size
    steps_per_epoch = size["train_samples"] // size["batch"]
    flags = [*common_flags(ctx), "--epochs", "2", "--max_samples", str(size["train_samples"]), "--lr", "0.01",
             "--num_workers", str(size["workers"][0]), "--output_dir", str(out),
             "--checkpoint_every", str(size["checkpoint_every"])]
    kill_at = steps_per_epoch + size["checkpoint_every"]  # inside epoch 2, so the kill loses a partial epoch
    proc = subprocess.Popen([sys.executable, "main.py", *flags], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed_at, seen = -1, None
        while proc.poll() is None:
            stamp = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else None
            if stamp != seen:  # read a checkpoint (hundreds of MB on ImageNet) only when it changed
                killed_at = last_checkpoint_step(out / "last.pt", steps_per_epoch)
                seen = stamp if killed_at >= 0 else None  # a failed read is tried again
            if killed_at >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    if code != -signal.SIGKILL:
        raise RuntimeError(f"the run to be killed ended by itself (exit {code}) before step {kill_at}: "
                           + (proc.stderr.read().strip().splitlines() or ["(no output)"])[-1])
    resumed = run(["main.py", *flags, "--resume", "auto"], timeout=600)
    if "Resuming from" not in resumed.stdout:
        raise RuntimeError("--resume auto did not resume from the checkpoint")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    if [int(r["epoch"]) for r in rows] != [1, 2]:
        raise RuntimeError(f"metrics.csv after the resume lists epochs {[r['epoch'] for r in rows]}, not [1, 2]")
    return {"resumed": True, "killed_at_step": killed_at, "steps": 2 * steps_per_epoch,
            "train_img_s_by_epoch": [float(r["images_per_second"]) for r in rows]}


STEPS = {"cuda_tests": step_tests, "bench": step_bench, "jpeg_tree": step_data, "end_to_end": step_end_to_end,
         "train_resume": step_resume}


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['device']}{', tiny' if result['tiny'] else ''})", "",
             "| step | ok | seconds | figures |", "|---|---|---|---|"]
    for step in result["steps"]:
        figures = {k: v for k, v in step.items() if k not in ("name", "ok", "seconds")}
        lines.append(f"| {step['name']} | {'yes' if step['ok'] else 'NO'} | {step['seconds']} | "
                     f"{json.dumps(figures)} |")
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the steps run (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="small sizes, for a CPU test")
    parser.add_argument("--out", default=os.environ.get("OUT") or "./outputs/gpu_check",
                        help="folder for gpu_check.json / .md (default $OUT, else ./outputs/gpu_check)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to run (default: all)")
    parser.add_argument("--fail_step", default=None, choices=tuple(STEPS), help="make this step fail (tests the check)")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out).resolve()
    ctx = argparse.Namespace(device=args.device, tiny=args.tiny, size=sizes(args.device, args.tiny),
                             work=out / "work", model_img_s=None, data=None)
    ctx.work.mkdir(parents=True, exist_ok=True)
    result = {"device": args.device, "tiny": args.tiny, "steps": []}
    chosen = args.steps.split(",")
    unknown = [name for name in chosen if name not in STEPS]
    if unknown:
        print(f"error: --steps: unknown {', '.join(unknown)}; choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    for name, step in STEPS.items():
        if name not in chosen:
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            if name == args.fail_step:
                raise RuntimeError("failure injected by --fail_step")
            record = {"ok": True, **step(ctx)}
        except Exception as exc:  # record and go on: later steps are independent
            record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"step {name} failed: {record['error']}", file=sys.stderr, flush=True)
        result["steps"].append({"name": name, **record, "seconds": round(time.perf_counter() - start, 1)})
    atomic_write_json(out / "gpu_check.json", result)
    atomic_write_text(out / "gpu_check.md", markdown(result))
    failed = [s["name"] for s in result["steps"] if not s["ok"]]
    print(f"Wrote {out / 'gpu_check.json'} and gpu_check.md")
    if failed:
        print(f"error: failed step(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
