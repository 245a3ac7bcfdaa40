"""Speed and memory of the suite against plain alternatives, measured side by side in one run.

Builds its own ImageNet-sized JPEGs from scikit-learn's sample photographs, then measures
the input pipeline (against torchvision + PIL and against OpenCV decode alone), the
training step (our default precision and channels_last against fp32 NCHW), the range
test's overhead (against a hand-written loop), ``main.py --find_lr`` end to end (against
the model step alone) and the finder's peak memory. Each ratio is the median of
interleaved repeats (A B A B ...); timed steps exclude warm-up steps (the first steps pay for
kernel selection, allocation and, under torch.compile, compiling). Prints a Markdown table;
``--json`` writes every figure, rewritten after each stage, so a stage that fails or is
killed (a torch.compile error, a time limit) loses none measured before it.

    .venv/bin/python benchmarks/bench.py --quick --json /tmp/bench.json   # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/bench.py                                  # longer, steadier
    .venv/bin/python benchmarks/bench.py --device cuda                    # batch 256 on a GPU
    .venv/bin/python benchmarks/bench.py --device cuda --compile          # also torch.compile's step, peak GPU memory
    .venv/bin/python benchmarks/bench.py --device cuda --quick --stages compile   # only torch.compile's step
    .venv/bin/python benchmarks/bench.py --shards                         # only: shards vs tree read, workers' memory
"""

import argparse
import contextlib
import gc
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from jpegs import write_jpeg_folder  # noqa: E402
from pipelines import pipeline_passes  # noqa: E402
from steps import FinderAgainstPlainLoop, Setup, StepRunner, run_find_lr_child  # noqa: E402

from atomic_io import atomic_write_json  # noqa: E402
from errors import EXIT_USAGE  # noqa: E402
from runtime import AMP_DTYPES, cpu_has_native_bf16, select_precision  # noqa: E402

# Ratio targets on the 2-core CPU machine the suite is developed on (issue #5).
TARGETS = {
    "pipeline_vs_torchvision": 4.0,
    "pipeline_vs_decode": 0.60,
    "step_vs_fp32": 2.3,
    "finder_vs_plain_loop": 0.97,
    "end_to_end_vs_model_only": 0.90,
}
DISTURBED_CORES = 0.15  # other processes' use of the CPU above which a stage's figures are suspect


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one benchmark profile."""
    images: int  # JPEGs generated (and passed over per pipeline round)
    pipeline_rounds: int
    step_batch: int
    step_size: int  # also the image side of the end-to-end run
    step_warmup: int
    step_steps: int  # timed steps per round
    step_rounds: int
    finder_batch: int
    finder_size: int
    finder_steps: int
    finder_rounds: int
    e2e_batch: int
    e2e_iter: int
    e2e_workers: int
    e2e_rounds: int
    rss_batch: int = 32
    rss_size: int = 224
    rss_iter: int = 3
    pipeline_size: int = 224


STAGES = ("pipeline", "step", "finder", "end_to_end", "rss", "compile")  # in the order they run
DEFAULT_STAGES = "pipeline,step,finder,end_to_end,rss"  # compile: with --compile or named in --stages
NEEDS_JPEGS = {"pipeline", "end_to_end", "rss"}


def choose_settings(device: torch.device, quick: bool, tiny: bool) -> Settings:
    """tiny: seconds, for the test; quick: under 3 minutes on 2 CPU cores; else steadier figures."""
    if tiny:
        return Settings(images=8, pipeline_rounds=1, step_batch=2, step_size=32, step_warmup=1, step_steps=2,
                        step_rounds=1, finder_batch=2, finder_size=32, finder_steps=2, finder_rounds=1, e2e_batch=2,
                        e2e_iter=3, e2e_workers=1, e2e_rounds=1, rss_batch=2, rss_size=32)
    workers = len(os.sched_getaffinity(0))
    if device.type == "cuda":  # quick: the GPU check's bench step, about a minute on one H100 (docs/gpu.md)
        return Settings(images=384 if quick else 512, pipeline_rounds=2 if quick else 5, step_batch=256, step_size=224,
                        step_warmup=3, step_steps=5 if quick else 10, step_rounds=3 if quick else 5,
                        finder_batch=256, finder_size=224, finder_steps=10 if quick else 20, finder_rounds=3,
                        e2e_batch=256, e2e_iter=100 if quick else 200, e2e_workers=workers,
                        e2e_rounds=1 if quick else 3, rss_iter=5)
    if quick:  # batch 8 where the time allows no more; the step at 16, where fp32 NCHW shows the speed
        # it keeps at larger batches (per image it slows from batch 8 to 32 on this CPU, bf16 does not)
        return Settings(images=64, pipeline_rounds=5, step_batch=16, step_size=224, step_warmup=1, step_steps=2,
                        step_rounds=3, finder_batch=8, finder_size=128, finder_steps=8, finder_rounds=3, e2e_batch=8,
                        e2e_iter=20, e2e_workers=workers, e2e_rounds=1, rss_iter=2)
    return Settings(images=256, pipeline_rounds=7, step_batch=32, step_size=224, step_warmup=1, step_steps=3,
                    step_rounds=3, finder_batch=32, finder_size=224, finder_steps=10, finder_rounds=3, e2e_batch=32,
                    e2e_iter=20, e2e_workers=workers, e2e_rounds=3, rss_iter=5)


# ----------------------------------------------------------------- repeats and ratios


def interleave(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each measure once per round, in turn (A B C A B C ...), so drifts in machine load
    fall on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    return samples


def median_ratio(ours: list[float], against: list[float]) -> float:
    """The median over rounds of ours / against, each round against its own neighbour."""
    return statistics.median(a / b for a, b in zip(ours, against, strict=True))


def spread(values: list[float]) -> float:
    """(max - min) / median: how far the repeats disagree; 0 for a single repeat."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


@dataclass
class Figure:
    """One comparison: per-round samples of ours and of what it is held against."""
    key: str
    label: str
    unit: str
    ours_name: str
    against_name: str
    ours: list[float]
    against: list[float]

    @property
    def ratio(self) -> float:
        return median_ratio(self.ours, self.against)

    @property
    def ratio_spread(self) -> float:
        return spread([a / b for a, b in zip(self.ours, self.against)])


# ------------------------------------------------------------------- the machine


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo_path).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: torch.device, precision: str, why: str) -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "precision": precision,
        "precision_reason": why,
    }


# ------------------------------------------------------------------ measurements


def measure_pipelines(root: Path, settings: Settings, seed: int) -> tuple[Figure, Figure]:
    """Per worker: one thread, as a DataLoader worker runs (it sets torch to one thread)."""
    passes = pipeline_passes(root, settings.pipeline_size, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        interleave(passes, 1)  # warm the page cache and lazy initialisations
        samples = interleave(passes, settings.pipeline_rounds)
    finally:
        torch.set_num_threads(threads)
    label = f"input pipeline, per worker, {settings.pipeline_size} px"
    return (
        Figure("pipeline_vs_torchvision", label, "img/s", "OpenCV + albumentations, uint8 out",
               "torchvision ImageFolder + PIL + transforms", samples["ours"], samples["torchvision"]),
        Figure("pipeline_vs_decode", "input pipeline vs the decode floor", "img/s",
               "OpenCV + albumentations, uint8 out", "OpenCV decode alone", samples["ours"], samples["decode"]),
    )


def measure_step(settings: Settings, device: torch.device, precision: str) -> Figure:
    runners = {
        "ours": StepRunner(Setup(device, settings.step_batch, settings.step_size, AMP_DTYPES[precision], True)),
        "fp32": StepRunner(Setup(device, settings.step_batch, settings.step_size, None, False)),
    }
    for runner in runners.values():
        runner.warm_up(settings.step_warmup)
    samples = interleave({name: (lambda r=r: r.measure(settings.step_steps)) for name, r in runners.items()},
                         settings.step_rounds)
    return Figure("step_vs_fp32", f"training step, {settings.step_size} px, batch {settings.step_batch}", "img/s",
                  f"{precision}, channels_last", "fp32, NCHW, eager", samples["ours"], samples["fp32"])


def measure_finder_overhead(settings: Settings, device: torch.device, precision: str) -> Figure:
    pair = FinderAgainstPlainLoop(Setup(device, settings.finder_batch, settings.finder_size, AMP_DTYPES[precision]))
    if settings.step_warmup:
        pair.finder_steps_per_second(settings.step_warmup + 1)
        pair.plain_steps_per_second(settings.step_warmup + 1)
    samples = interleave({"finder": lambda: pair.finder_steps_per_second(settings.finder_steps),
                          "plain": lambda: pair.plain_steps_per_second(settings.finder_steps)},
                         settings.finder_rounds)
    return Figure("finder_vs_plain_loop",
                  f"finder overhead, {settings.finder_size} px, batch {settings.finder_batch}, "
                  f"{settings.finder_steps} steps", "steps/s",
                  "RangeTest.sweep", "plain hand-written loop", samples["finder"], samples["plain"])


def compile_warmup_steps(settings: Settings) -> int:
    return settings.step_warmup + 2  # the first compiled steps compile (forward, then backward) and autotune


def measure_compiled_step(settings: Settings, device: torch.device, precision: str,
                          backend: str = "inductor") -> tuple[float, float]:
    """img/s of the same step with the model under torch.compile, and the seconds the untimed
    warm-up took (compiling, mostly)."""
    runner = StepRunner(Setup(device, settings.step_batch, settings.step_size, AMP_DTYPES[precision], True))
    runner.model = torch.compile(runner.model, backend=backend)
    started = time.perf_counter()
    runner.warm_up(compile_warmup_steps(settings))
    warmup_s = time.perf_counter() - started
    return statistics.median(runner.measure(settings.step_steps) for _ in range(settings.step_rounds)), warmup_s


def timing_record(settings: Settings) -> dict:
    """How many steps each model figure timed and how many it ran before, untimed."""
    s = settings
    return {
        "step_vs_fp32": {"warmup_steps": s.step_warmup, "timed_steps_per_round": s.step_steps,
                         "rounds": s.step_rounds, "batch": s.step_batch},
        "finder_vs_plain_loop": {"warmup_steps": s.step_warmup + 1 if s.step_warmup else 0,
                                 "timed_steps_per_round": s.finder_steps, "rounds": s.finder_rounds,
                                 "batch": s.finder_batch},
        "step_compiled": {"warmup_steps": compile_warmup_steps(s), "timed_steps_per_round": s.step_steps,
                          "rounds": s.step_rounds, "batch": s.step_batch},
    }


class ChildFailed(RuntimeError):
    pass


def checked(run):
    """A child run's result file, or ChildFailed with the end of its output. A sweep too
    short to suggest a rate (exit 2 with a result file) still measured its speed."""
    if run.result is None or not (run.result.get("sweep") or {}).get("images_per_second"):
        raise ChildFailed(f"main.py --find_lr exited with {run.returncode}:\n{run.output[-3000:]}")
    return run.result["sweep"]


def measure_end_to_end(root: Path, work: Path, settings: Settings, device: torch.device,
                       precision: str) -> tuple[Figure, float]:
    """main.py's own img/s (workers decoding real JPEGs, whole sweep timed) against the
    same model, batch, size and precision stepping on one pre-made batch; also the
    largest peak RSS of those main.py runs."""
    classes = len([p for p in (root / "train").iterdir() if p.is_dir()])
    alone = StepRunner(Setup(device, settings.e2e_batch, settings.step_size, AMP_DTYPES[precision], True,
                             num_classes=classes))
    alone.warm_up(settings.step_warmup)
    peaks = []

    def end_to_end() -> float:
        run = run_find_lr_child(REPO, root, work / "e2e", settings.e2e_batch, settings.step_size,
                                settings.e2e_iter, settings.e2e_workers, device)
        peaks.append(run.peak_rss_mb)
        return float(checked(run)["images_per_second"])

    alone_steps = max(1, settings.e2e_iter // 4)  # a quarter of the sweep: steady enough, and quick
    samples = interleave({"e2e": end_to_end, "alone": lambda: alone.measure(alone_steps)}, settings.e2e_rounds)
    figure = Figure("end_to_end_vs_model_only",
                    f"end to end, {settings.step_size} px, batch {settings.e2e_batch}, {settings.e2e_iter} steps",
                    "img/s", f"main.py --find_lr, {settings.e2e_workers} workers", "model step alone",
                    samples["e2e"], samples["alone"])
    return figure, max(peaks)


def measure_peak_rss(root: Path, work: Path, settings: Settings, device: torch.device) -> float:
    """Peak RSS of main.py --find_lr at the memory batch and size, without workers."""
    run = run_find_lr_child(REPO, root, work / "rss", settings.rss_batch, settings.rss_size, settings.rss_iter,
                            0, device)
    checked(run)
    return run.peak_rss_mb


def busy_cpu_seconds(stat_path: str = "/proc/stat") -> float:
    """CPU time all processes have used since boot (user, system, irq, steal...: all but idle)."""
    try:
        ticks = [int(v) for v in Path(stat_path).read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle, iowait = ticks[3], ticks[4] if len(ticks) > 4 else 0
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (main.py runs)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def stage(title: str, others: dict[str, float]):
    """Announce a measurement, then say how long it took and how many cores other processes
    kept busy meanwhile (recorded in ``others``): the sign of a disturbed figure."""
    print(f"measuring {title} ...", end=" ", flush=True)
    started, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    yield
    elapsed = time.perf_counter() - started
    others[title] = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)) / elapsed
    print(f"{elapsed:.0f} s (other processes: {others[title]:.2f} cores)", flush=True)
    free_memory()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- reporting


def target_status(key: str, ratio: float, device: torch.device, precision: str) -> str:
    """met / MISSED against the CPU targets; n/a where a target does not apply."""
    if device.type != "cpu" or (key == "step_vs_fp32" and precision != "bf16"):
        return "n/a"
    return "met" if ratio >= TARGETS[key] else "MISSED"


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown_table(figures: list[Figure], peak_rss_mb: float | None, settings: Settings, device: torch.device,
                   precision: str) -> str:
    rows = ["| figure | ours | against | ratio (spread) | target | |", "|---|---|---|---|---|---|"]
    for f in figures:
        ours = f"{fmt(statistics.median(f.ours))} {f.unit} ({f.ours_name})"
        against = f"{fmt(statistics.median(f.against))} {f.unit} ({f.against_name})"
        rows.append(f"| {f.label} | {ours} | {against} | {f.ratio:.2f} (±{f.ratio_spread / 2:.0%}) "
                    f"| >= {TARGETS[f.key]:g} | {target_status(f.key, f.ratio, device, precision)} |")
    if peak_rss_mb is not None:
        rows.append(f"| memory, finder at batch {settings.rss_batch}, {settings.rss_size} px | "
                    f"peak RSS {peak_rss_mb:,.0f} MB | | | | reported |")
    return "\n".join(rows)


# Each figure's absolute medians in the JSON: (key of ours, key of what it is held against, digits).
ABSOLUTES = {
    "pipeline_vs_torchvision": ("pipeline_ours_img_s", "pipeline_torchvision_img_s", 1),
    "pipeline_vs_decode": (None, "decode_img_s", 1),
    "step_vs_fp32": ("step_ours_img_s", "step_fp32_img_s", 2),
    "finder_vs_plain_loop": ("finder_steps_s", "plain_loop_steps_s", 3),
    "end_to_end_vs_model_only": ("end_to_end_img_s", "model_only_img_s", 2),
}


def results_json(figures: list[Figure], peak_rss_mb: float | None, machine: dict, settings: Settings,
                 others: dict[str, float], started: str, elapsed: float, device: torch.device,
                 precision: str) -> dict:
    """Every figure measured so far (a stage not run yet or failed has no keys here)."""
    absolutes = {}
    for f in figures:
        ours, against, digits = ABSOLUTES[f.key]
        if ours:
            absolutes[ours] = round(statistics.median(f.ours), digits)
        absolutes[against] = round(statistics.median(f.against), digits)
    return {
        **{f.key: round(f.ratio, 4) for f in figures},
        **({"peak_rss_mb": round(peak_rss_mb, 1)} if peak_rss_mb is not None else {}),
        **absolutes,
        "cpu": machine["cpu"],
        "gpu": machine["gpu"],
        "machine": machine,
        "targets": {f.key: {"target": TARGETS[f.key], "status": target_status(f.key, f.ratio, device, precision)}
                    for f in figures},
        "spread": {f.key: round(f.ratio_spread, 4) for f in figures},
        "samples": {f.key: {"ours": [round(x, 3) for x in f.ours], "against": [round(x, 3) for x in f.against]}
                    for f in figures},
        "settings": asdict(settings),
        "timing": timing_record(settings),
        "other_processes_cores": {title: round(cores, 3) for title, cores in others.items()},
        "started": started,
        "elapsed_s": round(elapsed, 1),
    }


# ---------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches and few repeats (under 3 min on 2 cores)")
    parser.add_argument("--tiny", action="store_true",
                        help="seconds-long settings that only check the benchmark runs (figures meaningless)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model steps run")
    parser.add_argument("--json", default=None,
                        help="also write every figure and ratio to this JSON file (rewritten after each stage)")
    parser.add_argument("--workdir", default=None,
                        help="keep the JPEGs and child outputs here (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=DEFAULT_STAGES,
                        help=f"comma-separated measurements to take, run in this order: {', '.join(STAGES)}")
    parser.add_argument("--scale", action="store_true",
                        help="only the 1.28 M-file index figures (scale.py; builds the hard-link tree in --workdir)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the training step with the model under torch.compile (the compile stage)")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile's backend for the compile stage ('eager' only checks the capture)")
    parser.add_argument("--shards", action="store_true",
                        help="only the shard read figure (shard_read.py): images/s from WebDataset shards and "
                             "from the tree over the same JPEGs, and the workers' memory")
    return parser


def chosen_stages(args) -> list[str] | str:
    """The stages to run in their fixed order, or an error message."""
    names = [name for name in args.stages.split(",") if name]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        return f"--stages {args.stages}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(STAGES)}"
    if args.compile:
        names.append("compile")
    return [name for name in STAGES if name in names]


class Run:
    """One benchmark run's figures so far; ``save`` rewrites the JSON with all of them."""

    def __init__(self, args, device: torch.device, precision: str, why: str, settings: Settings):
        self.args, self.device, self.precision, self.settings = args, device, precision, settings
        self.machine = machine_facts(device, precision, why)
        self.started, self.clock = datetime.now().isoformat(timespec="seconds"), time.perf_counter()
        self.figures: list[Figure] = []
        self.peak_rss_mb: float | None = None
        self.e2e_peak_rss_mb: float | None = None
        self.extras: dict = {}  # not ratios against a target: figures the GPU check reports as they are
        self.others: dict[str, float] = {}
        self.done: list[str] = []
        self.failed: dict[str, str] = {}

    def record(self, stages: list[str]) -> dict:
        if self.device.type == "cuda":  # the in-process steps and finder; main.py runs are children
            self.extras["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return {**results_json(self.figures, self.peak_rss_mb, self.machine, self.settings, self.others,
                               self.started, time.perf_counter() - self.clock, self.device, self.precision),
                **self.extras, "stages": stages, "stages_done": self.done, "stages_failed": self.failed,
                "complete": self.done == stages}

    def save(self, stages: list[str]) -> None:
        if self.args.json:
            atomic_write_json(self.args.json, self.record(stages))


def stage_title(name: str, s: Settings) -> str:
    return {
        "pipeline": f"input pipeline: {s.images} JPEGs x {s.pipeline_rounds} rounds",
        "step": f"training step: batch {s.step_batch}, {s.step_steps} steps x {s.step_rounds} rounds",
        "finder": f"finder overhead: {s.finder_steps} steps x {s.finder_rounds} rounds at {s.finder_size} px",
        "end_to_end": f"end to end: main.py --find_lr, {s.e2e_iter} steps x {s.e2e_rounds} rounds",
        "rss": f"peak RSS: main.py --find_lr at batch {s.rss_batch}, {s.rss_size} px",
        "compile": f"compiled training step: batch {s.step_batch}",
    }[name]


def measure_stage(name: str, run: Run, root: Path | None, work: Path) -> None:
    """One measurement, its results added to ``run``."""
    s, device, precision = run.settings, run.device, run.precision
    if name == "pipeline":
        run.figures.extend(measure_pipelines(root, s, run.args.seed))
    elif name == "step":
        run.figures.append(measure_step(s, device, precision))
    elif name == "finder":
        run.figures.append(measure_finder_overhead(s, device, precision))
    elif name == "end_to_end":
        figure, run.e2e_peak_rss_mb = measure_end_to_end(root, work, s, device, precision)
        run.figures.append(figure)
    elif name == "rss":
        if (s.rss_batch, s.rss_size) == (s.e2e_batch, s.step_size) and run.e2e_peak_rss_mb is not None:
            run.peak_rss_mb = run.e2e_peak_rss_mb  # the end-to-end runs already were that finder
        else:
            run.peak_rss_mb = measure_peak_rss(root, work, s, device)
    elif name == "compile":
        img_s, warmup_s = measure_compiled_step(s, device, precision, run.args.compile_backend)
        run.extras.update(step_compiled_img_s=round(img_s, 2), compile_warmup_s=round(warmup_s, 1),
                          compile_backend=run.args.compile_backend)


def run_benchmark(args) -> int:
    stages = chosen_stages(args)
    if isinstance(stages, str):
        print(f"error: {stages}", file=sys.stderr)
        return EXIT_USAGE
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible; run with --device cpu", file=sys.stderr)
        return EXIT_USAGE
    device = torch.device(args.device)
    precision, why = select_precision("auto", device)
    run = Run(args, device, precision, why, choose_settings(device, args.quick, args.tiny))
    machine = run.machine
    print(f"CPU: {machine['cpu']} ({machine['cpu_cores']} cores), GPU: {machine['gpu'] or 'none'}, "
          f"torch {machine['torch']} ({machine['torch_threads']} threads)")
    print(f"Precision: {precision} ({why}); stages: {', '.join(stages)}", flush=True)

    run.save(stages)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(args.workdir or scratch)
        root = write_jpeg_folder(work / "data", run.settings.images, seed=args.seed) \
            if NEEDS_JPEGS & set(stages) else None
        for name in stages:
            try:
                with stage(stage_title(name, run.settings), run.others):
                    measure_stage(name, run, root, work)
                run.done.append(name)
            except Exception as exc:  # noqa: BLE001 - recorded; the next stage is independent
                run.failed[name] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
                print(f"\nerror: stage {name} failed: {run.failed[name]}", file=sys.stderr, flush=True)
                free_memory()
            run.save(stages)
    elapsed = time.perf_counter() - run.clock

    print()
    print(f"{run.started[:10]}, {machine['cpu']}, {machine['cpu_cores']} cores, GPU {machine['gpu'] or 'none'}, "
          f"torch {machine['torch']}, device {device}, precision {precision}")
    print(markdown_table(run.figures, run.peak_rss_mb, run.settings, device, precision))
    run.record(stages)  # adds the peak GPU memory to the extras
    for key, value in run.extras.items():
        print(f"{key}: {value:,}" if isinstance(value, (int, float)) else f"{key}: {value}")
    print(f"\nratios: medians of interleaved repeats, ± half their range; {elapsed:.0f} s in all")
    disturbed = {title: cores for title, cores in run.others.items() if cores > DISTURBED_CORES}
    for title, cores in disturbed.items():
        print(f"warning: other processes kept {cores:.2f} cores busy during '{title}': those figures are disturbed")
    if args.json:
        print(f"figures written to {args.json}")
    if run.failed:
        print(f"error: stage(s) failed: {', '.join(run.failed)}", file=sys.stderr)
        return 1
    return 0


def run_scale(args) -> int:
    from scale import measure_scale

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        figures = measure_scale(Path(args.workdir or scratch))
    print(figures)
    if args.json:
        atomic_write_json(args.json, figures)
        print(f"figures written to {args.json}")
    return 0


def run_shard_read(args) -> int:
    from shard_read import measure_shard_read, shard_read_table

    count, size, batch, rounds = (16, 32, 4, 1) if args.tiny else (256, 224, 32, 3) if args.quick else (1024, 224, 32, 3)
    workers = len(os.sched_getaffinity(0))
    started = datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as scratch:
        work = Path(args.workdir or scratch)
        root = write_jpeg_folder(work / "data", count, seed=args.seed)
        figures = measure_shard_read(root, work, size, batch, workers, rounds, args.seed)
    figures.update(started=started, cpu=cpu_model(), cpu_cores=len(os.sched_getaffinity(0)))
    print(f"{started[:10]}, {figures['cpu']}, {figures['cpu_cores']} cores")
    print(shard_read_table(figures))
    if args.json:
        atomic_write_json(args.json, figures)
        print(f"figures written to {args.json}")
    return 0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.shards:
        return run_shard_read(args)
    return run_scale(args) if args.scale else run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
