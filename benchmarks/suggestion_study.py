"""Do the suggested learning rates land where training is best? For each case: one range test,
then training runs from the same initial weights at a grid of rates (x3.16 apart, extended
until the best rate is inside the grid), the best rate again with other seeds (the noise), and
every suggestion method placed on that curve.

For every case and method it reports the suggested rate, log10(suggested / best grid rate), the
val top-1 interpolated at the suggestion (linear in log lr between grid points), its gap to the
best, and whether it lands in the plateau: the grid rates whose top-1 is within the seed noise of
the best. A suggestion lands in the plateau when it lies within the span of those rates, widened by
half a grid step on each side: between two rates that both train as well as the best, a rate
that scored lower is taken as noise, not as a hole in the plateau.

    uv run python benchmarks/suggestion_study.py --json outputs/study.json --plot outputs/study.png
    uv run python benchmarks/suggestion_study.py --quick --json /tmp/q.json     # a minute, for tests

Every run is cached in --work_dir by its exact command line, so a rerun only computes what
changed (new methods are computed from the cached sweep histories without any new run).
"""

import argparse
import contextlib
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

SMOOTH_F = 0.05  # main.py's default --lr_smooth_f
GRID_STEP = 10 ** 0.5  # about x3.16 between grid rates
MAX_EXTENSIONS = 3


@dataclass(frozen=True)
class Case:
    name: str
    data: str  # "digits" or "patches"
    input_size: int
    batch_size: int
    epochs: int
    lr_start: float
    lr_end: float
    lr_iter: int
    grid: tuple  # initial grid, extended while the best rate sits at an edge
    max_samples: int | None = None
    noise_seeds: tuple = (1, 2)  # the best rate again with these seeds: their spread with seed 0 is the noise
    verify_steps: int = 0  # --lr_verify N for the "lr_verify" method (0: not run)
    optimizer: str = "sgd"  # for the sweep and the training runs alike


CASES = (
    Case("digits-16px-b32", "digits", 16, 32, 4, 1e-5, 10.0, 120, (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316),
         noise_seeds=(1,), verify_steps=40),
    Case("digits-32px-b32", "digits", 32, 32, 4, 1e-5, 10.0, 100, (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316),
         max_samples=480, verify_steps=30),
    Case("patches-16px-b64", "patches", 16, 64, 4, 1e-4, 10.0, 100, (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316),
         max_samples=800, noise_seeds=(1,), verify_steps=25),
    # the demo's settings: AdamW learns enough in a short sweep for a deep fall
    Case("digits-16px-b32-adamw", "digits", 16, 32, 4, 1e-5, 1.0, 150,
         (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1), noise_seeds=(1,), verify_steps=30, optimizer="adamw"),
    Case("patches-16px-b64-adamw", "patches", 16, 64, 4, 1e-5, 1.0, 100, (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2),
         max_samples=800, noise_seeds=(1,), optimizer="adamw"),
    Case("digits-32px-b32-adamw", "digits", 32, 32, 4, 1e-5, 1.0, 100, (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2),
         max_samples=480, noise_seeds=(1,), optimizer="adamw"),
)
QUICK_CASES = (
    Case("quick-digits-16px-b16", "digits", 16, 16, 1, 1e-3, 10.0, 20, (1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316),
         max_samples=64, noise_seeds=(1,), verify_steps=2),
)


# ------------------------------------------------------------------- running main.py


def data_dir(kind: str) -> str:
    if kind == "digits":
        from demo_data import ensure_digits_imagefolder

        return str(ensure_digits_imagefolder())
    from photo_patches import ensure_photo_patches

    return str(ensure_photo_patches())


def run_main(argv: list[str], run_dir: Path, quiet: bool) -> dict:
    """``main.py argv`` in this process (no torch import per run), its output in run_dir/output.txt;
    cached: a finished run's ``result.json`` is reused when its command line is the same."""
    import main

    done = run_dir / "run.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record["argv"] == argv:
            return record
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run_dir / "output.txt", "w") as log:
        redirect = (contextlib.redirect_stdout(log), contextlib.redirect_stderr(log)) if quiet else ()
        with contextlib.ExitStack() as stack:
            for r in redirect:
                stack.enter_context(r)
            code = main.main(argv)
    for checkpoint in run_dir.glob("*.pt"):  # 100 MB each, not needed by the study
        checkpoint.unlink()
    record = {"argv": argv, "exit_code": code, "seconds": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(record, indent=1))
    return record


def common_flags(case: Case, folder: str) -> list[str]:
    flags = ["--data_dir", folder, "--dataset", "digits" if case.data == "digits" else "imagenet1k",
             "--input_size", str(case.input_size), "--batch_size", str(case.batch_size), "--num_workers", "2"]
    flags += ["--optimizer", case.optimizer] if case.optimizer != "sgd" else []  # (keeps older runs' cache keys)
    return flags + (["--max_samples", str(case.max_samples)] if case.max_samples else [])


def sweep_argv(case: Case, folder: str, run_dir: Path, verify_steps: int = 0) -> list[str]:
    return ["--find_lr", *common_flags(case, folder), "--lr_start", repr(case.lr_start), "--lr_end",
            repr(case.lr_end), "--lr_iter", str(case.lr_iter), "--lr_plot", str(run_dir / "range_test.png"),
            "--seed", "0"] + (["--lr_verify", str(verify_steps)] if verify_steps else [])


def train_argv(case: Case, folder: str, run_dir: Path, lr: float, seed: int) -> list[str]:
    return ["--lr", f"{lr:.6g}", *common_flags(case, folder), "--epochs", str(case.epochs), "--scheduler", "cosine",
            "--output_dir", str(run_dir), "--no_plots", "--seed", str(seed)]


def read_history(folder: Path) -> tuple[list[float], list[float]]:
    with open(folder / "lr_finder_history.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows]


def best_top1(folder: Path) -> float:
    """Best validation top-1 over the epochs of a training run (0 if it produced none)."""
    try:
        with open(folder / "metrics.csv") as f:
            values = [float(r["val_top1"]) for r in csv.DictReader(f)]
    except FileNotFoundError:
        return 0.0
    return max((v for v in values if math.isfinite(v)), default=0.0)


# ------------------------------------------------------------------- the measures (pure)


def interpolate_top1(lr: float, grid: dict[float, float]) -> tuple[float, bool]:
    """Top-1 at ``lr``, linear in log10(lr) between grid rates; (value, extrapolated?)."""
    rates = sorted(grid)
    x = np.log10(rates)
    y = [grid[r] for r in rates]
    value = float(np.interp(math.log10(lr), x, y))
    return value, not rates[0] <= lr <= rates[-1]


def plateau(grid: dict[float, float], best: float, noise: float) -> list[float]:
    return sorted(r for r, top1 in grid.items() if top1 >= best - noise)


def in_span(lr: float, rates: list[float]) -> bool:
    """Inside the span of these grid rates, widened by half a grid step on each side (the rates
    nearer to one of them than to the grid rate beyond)."""
    half_step = math.sqrt(GRID_STEP)
    return rates[0] / half_step <= lr <= rates[-1] * half_step


def place(lr: float, grid: dict[float, float], noise: float) -> dict:
    """Where a suggested rate lands on the measured curve."""
    best_lr = max(grid, key=grid.get)
    best = grid[best_lr]
    top1, extrapolated = interpolate_top1(lr, grid)
    return {"lr": lr, "log10_ratio": round(math.log10(lr / best_lr), 3), "top1": round(top1, 2),
            "gap": round(best - top1, 2), "extrapolated": extrapolated,
            "in_plateau": in_span(lr, plateau(grid, best, noise))}


# ------------------------------------------------------------------- one case


@dataclass
class CaseResult:
    case: dict
    grid: dict = field(default_factory=dict)  # lr -> best val top-1 (seed 0)
    seeds: dict = field(default_factory=dict)  # seed -> best val top-1 at the best rate
    best_lr: float = 0.0
    best_top1: float = 0.0
    noise: float = 0.0
    plateau: list = field(default_factory=list)
    sweep: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    divisors: dict = field(default_factory=dict)  # edge / k for each k in DIVISORS
    cost: dict = field(default_factory=dict)


DIVISORS = (1.0, 1.5, 2.0, 3.0, 4.0)  # the edge divided by these: the evidence for lr_finder.RISE_DIVISOR


def suggestions_from_history(lrs, losses, optimizer: str) -> tuple[dict[str, float], dict]:
    """Every method's rate (as main.py computes them) and the sweep's landmarks."""
    from lr_finder import AUTO, SuggestionError, auto_method, find_landmarks, suggest_all

    try:
        marks = find_landmarks(lrs, losses)
        suggestions = suggest_all(lrs, losses, SMOOTH_F)
        suggestions[AUTO] = suggestions[auto_method(optimizer)]  # the default
        return suggestions, {"edge_lr": marks.edge_lr, "min_loss_lr": marks.min_lr,
                             "loss_drop": round(marks.loss_drop, 4), "auto_method": auto_method(optimizer)}
    except SuggestionError:
        return {}, {}


def sweep_case(case: Case, work: Path, quiet: bool):
    """The case's range test (cached): (lrs, raw losses, its JSON, the run record)."""
    sweep_dir = work / case.name / "sweep"
    record = run_main(sweep_argv(case, data_dir(case.data), sweep_dir), sweep_dir, quiet)
    lrs, losses = read_history(sweep_dir)
    return lrs, losses, json.loads((sweep_dir / "suggested_lr.json").read_text()), record


def run_case(case: Case, work: Path, quiet: bool, verify: bool) -> CaseResult:
    folder = data_dir(case.data)
    base = work / case.name
    say = print if quiet else (lambda *a, **k: None)
    result = CaseResult(case=asdict(case))

    lrs, losses, sweep_json, record = sweep_case(case, work, quiet)
    result.sweep = {"steps_run": len(lrs), "stop_reason": sweep_json["stop_reason"], "seconds": record["seconds"],
                    "history": {"lr": lrs, "loss": losses}}
    result.cost["sweep_steps"] = len(lrs)
    say(f"[{case.name}] sweep: {len(lrs)} steps, {sweep_json['stop_reason']} ({record['seconds']} s)", flush=True)

    def train(lr: float, seed: int) -> float:
        run_dir = base / f"train-lr{lr:.4g}-seed{seed}"
        rec = run_main(train_argv(case, folder, run_dir, lr, seed), run_dir, quiet)
        top1 = best_top1(run_dir)
        say(f"[{case.name}] lr {lr:.4g} seed {seed}: best val top-1 {top1:.2f} % ({rec['seconds']} s)", flush=True)
        return top1

    rates = list(case.grid)
    for lr in rates:
        result.grid[lr] = train(lr, 0)
    for _ in range(MAX_EXTENSIONS):  # the best must be inside the grid, not at an edge
        result.grid = dict(sorted(result.grid.items()))  # ties go to the lowest rate, here and below
        best_lr = max(result.grid, key=result.grid.get)
        ordered = list(result.grid)
        if best_lr == ordered[0]:
            new = ordered[0] / GRID_STEP
        elif best_lr == ordered[-1]:
            new = ordered[-1] * GRID_STEP
        else:
            break
        result.grid[new] = train(new, 0)
    result.grid = dict(sorted(result.grid.items()))
    result.best_lr = max(result.grid, key=result.grid.get)
    result.best_top1 = result.grid[result.best_lr]
    result.seeds = {0: result.best_top1, **{s: train(result.best_lr, s) for s in case.noise_seeds}}
    result.noise = round(max(result.seeds.values()) - min(result.seeds.values()), 2)
    result.plateau = plateau(result.grid, result.best_top1, result.noise)
    result.cost["train_runs"] = len(result.grid) + len(case.noise_seeds)

    suggestions, landmarks = suggestions_from_history(lrs, losses, case.optimizer)
    for name, lr in suggestions.items():
        result.methods[name] = place(lr, result.grid, result.noise)
    result.sweep.update(landmarks)
    if landmarks.get("edge_lr"):
        result.divisors = {k: place(landmarks["edge_lr"] / k, result.grid, result.noise) for k in DIVISORS}
    if verify and case.verify_steps:
        verify_dir = base / f"verify-{case.verify_steps}"
        run_main(sweep_argv(case, folder, verify_dir, case.verify_steps), verify_dir, quiet)
        verified = json.loads((verify_dir / "suggested_lr.json").read_text())
        # what a user of --lr_verify gets: the trials' rate, or the curve's when they were inconclusive
        result.methods["lr_verify"] = place(verified["suggested_lr"], result.grid, result.noise)
        result.cost["verify_steps"] = verified["verify_total_steps"]
        result.cost["verify_seconds"] = verified["verify_elapsed_s"]
        result.cost["verify_outcome"] = verified["verify_outcome"]
    return result


# ------------------------------------------------------------------- output


def verify_cost(r: CaseResult) -> str:
    steps = r.cost.get("verify_steps")
    if not steps:
        return "not run"
    return (f"{steps} steps ({steps / r.cost['sweep_steps']:.1f}x the sweep), {r.cost['verify_seconds']:.0f} s, "
            f"{r.cost['verify_outcome']}")


def table(results: list[CaseResult]) -> str:
    """Three Markdown tables: the cases, every method on them, and the edge divided by k."""
    cases = ["| case | sweep | best rate (val top-1) | seed noise | plateau | loss drop | edge | --lr_verify cost |",
             "|---|---|---|---|---|---|---|---|"]
    methods = ["| case | method | suggested | log10(s / best) | top-1 at s | gap to best | in plateau |",
               "|---|---|---|---|---|---|---|"]
    divisors = ["| case | " + " | ".join(f"edge / {k:g}" for k in DIVISORS) + " |", "|---" * (len(DIVISORS) + 1) + "|"]
    for r in results:
        c, sweep = r.case, r.sweep
        edge = f"{sweep['edge_lr']:.3g}" if sweep.get("edge_lr") else "none"
        cases.append(f"| {c['name']} | {sweep['steps_run']} steps {c['lr_start']:g} to {c['lr_end']:g} | "
                     f"{r.best_lr:.3g} ({r.best_top1:.1f} %) | {r.noise:.1f} | {r.plateau[0]:.3g} to {r.plateau[-1]:.3g} | "
                     f"{sweep.get('loss_drop', float('nan')):.1%} | {edge} | {verify_cost(r)} |")
        for name, m in r.methods.items():
            methods.append(f"| {c['name']} | {name} | {m['lr']:.3g} | {m['log10_ratio']:+.2f} | {m['top1']:.1f} | "
                           f"{m['gap']:.1f} | {'yes' if m['in_plateau'] else 'no'} |")
        cells = [f"{m['log10_ratio']:+.2f} {'in' if m['in_plateau'] else 'out'}" for m in r.divisors.values()]
        divisors.append(f"| {c['name']} | " + " | ".join(cells) + " |")
    return "\n".join(cases + [""] + methods + [""] + divisors)


def plot(results: list[CaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, r in zip(axes[0], results):
        rates = list(r.grid)
        ax.plot(rates, [r.grid[x] for x in rates], "o-", color="black", label="val top-1 (seed 0)")
        ax.axhspan(r.best_top1 - r.noise, r.best_top1, color="green", alpha=0.12, label=f"seed noise {r.noise:.1f}")
        ax.plot([r.best_lr] * len(r.seeds), list(r.seeds.values()), "x", color="green")
        for i, (name, m) in enumerate(r.methods.items()):
            ax.axvline(m["lr"], color=colors[i % len(colors)], ls="--", lw=1.2, label=f"{name} {m['lr']:.2g}")
        ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel="best val top-1 (%)", title=r.case["name"])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one tiny case (about a minute), for the test suite")
    parser.add_argument("--cases", nargs="*", default=None, help="names of the cases to run (default: all)")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "suggestion_study"),
                        help="cache of every run (reused when its command line is unchanged)")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--plot", default=None, help="val top-1 against lr per case, each method marked")
    parser.add_argument("--no_verify", action="store_true", help="skip the --lr_verify runs")
    parser.add_argument("--verbose", action="store_true", help="show main.py's own output")
    args = parser.parse_args(argv)

    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    work = Path(args.work_dir)
    for case in cases:  # all range tests first: the cheap part, and all a new method needs
        sweep_case(case, work, quiet=not args.verbose)
    results = [run_case(c, work, quiet=not args.verbose, verify=not args.no_verify) for c in cases]
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"date": date.today().isoformat(), "cases": [asdict(r) for r in results]}, indent=1))
    if args.plot:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
