"""Do the suggested learning rates land where training is best, on cases the rule was not fitted to?

For each case (benchmarks/study_cases.py: FIT_CASES chose the rule, TEST_CASES judge it and are
reported apart): one range test, then trainings from the same initial weights at a grid of rates
(x4 apart, extended until the best rate is inside, then refined to x2 on both sides of the best),
the best rate again with two other seeds (the noise), optionally the best and its neighbours at
twice the epochs (does the horizon move the answer?), and ``--lr_verify`` (10-step first rounds,
2.5 sweeps, and ``--lr_verify_share 5``: 5 % of the case's own training). Every method, the
suggested range and the verified answer are then placed on that curve.

The plateau is the grid rates whose top-1 is within the seed noise of the best; a rate lands in it
when it lies between the plateau's outer rates, widened half-way (in log) to the next grid rate
beyond. "collapsed" marks a rate whose top-1 is under half the best.

    uv run python benchmarks/suggestion_study.py --json docs/suggestion_study.json --plot docs/suggestion_study.png
    uv run python benchmarks/suggestion_study.py --set test --json /tmp/t.json     # the test cases only
    uv run python benchmarks/suggestion_study.py --quick --records /tmp/r          # a minute, for tests

Each finished run leaves a small JSON record in --records (benchmarks/study_records/ by default,
committed), so the study resumes from the repository on a fresh machine: a run whose record
matches its command line is not run again.
"""

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
from study_cases import ALL_CASES, FIT_CASES, QUICK_CASES, TEST_CASES, Case  # noqa: E402
from study_runs import Runner  # noqa: E402

COARSE_STEP = 4.0
FINE_STEP = 2.0
MAX_EXTENSIONS = 3
MAX_UNSTABLE = 3  # best rates given up because a seed collapsed there, at most
NOISE_SEEDS = (1, 2)
COLLAPSE_SHARE = 0.5  # a top-1 under half the best is a collapsed training
VERIFY_BUDGET = 2.5  # the second --lr_verify run may cost this many sweeps (the default's bar)
VERIFY_SHARE = 5.0  # the third: --lr_verify_share, this % of the case's own training (the most a user would spend)


# ------------------------------------------------------------------- the measures (pure)


def interpolate_top1(lr: float, grid: dict[float, float]) -> tuple[float, bool]:
    """Top-1 at ``lr``, linear in log10(lr) between grid rates; (value, extrapolated?)."""
    rates = sorted(grid)
    value = float(np.interp(math.log10(lr), np.log10(rates), [grid[r] for r in rates]))
    return value, not rates[0] <= lr <= rates[-1]


def plateau(grid: dict[float, float], best: float, noise: float) -> list[float]:
    return sorted(r for r, top1 in grid.items() if top1 >= best - noise)


def plateau_bounds(grid: dict[float, float], best: float, noise: float) -> tuple[float, float]:
    """The span a rate must fall in to count as inside the plateau: its outer rates, widened
    half-way (geometric mean) to the next grid rate beyond, or by sqrt(FINE_STEP) at the grid's ends."""
    rates, inside = sorted(grid), plateau(grid, best, noise)
    below = [r for r in rates if r < inside[0]]
    above = [r for r in rates if r > inside[-1]]
    low = math.sqrt(inside[0] * below[-1]) if below else inside[0] / math.sqrt(FINE_STEP)
    high = math.sqrt(inside[-1] * above[0]) if above else inside[-1] * math.sqrt(FINE_STEP)
    return low, high


def collapsed(top1: float, best: float) -> bool:
    """A training that reached under COLLAPSE_SHARE of the best top-1 collapsed."""
    return top1 < COLLAPSE_SHARE * best


def lost_within_noise(gap: float, noise: float) -> bool:
    """Whether the top-1 lost against the best rate is no more than the case's seed noise."""
    return gap <= noise


def place(lr: float, grid: dict[float, float], noise: float) -> dict:
    """Where a suggested rate lands on the measured curve."""
    best_lr = max(grid, key=grid.get)
    best = grid[best_lr]
    top1, extrapolated = interpolate_top1(lr, grid)
    low, high = plateau_bounds(grid, best, noise)
    return {"lr": lr, "log10_best_over_reading": round(math.log10(best_lr / lr), 3), "top1": round(top1, 2),
            "gap": round(best - top1, 2), "extrapolated": extrapolated, "in_plateau": low <= lr <= high,
            "collapsed": collapsed(top1, best)}


def next_grid_rate(grid: dict[float, float]) -> float | None:
    """The next rate to train: beyond the best while it sits at an edge (x4), then its x2
    neighbours; None once the best has a neighbour at most x2 away on each side."""
    rates = sorted(grid)
    best = max(rates, key=lambda r: (grid[r], -r))  # ties go to the lower rate
    for side in (-1, 1):
        neighbours = [r for r in rates if (r - best) * side > 0]
        if not neighbours:
            return best * COARSE_STEP ** side
        nearest = min(neighbours, key=lambda r: abs(math.log(r / best)))
        if abs(math.log(nearest / best)) > math.log(FINE_STEP) * 1.01:
            return best * FINE_STEP ** side
    return None


def budget_steps(candidates: int, sweep_steps: int, budget: float = VERIFY_BUDGET) -> int:
    """The largest first-round N whose successive halving over ``candidates`` rates costs at most
    ``budget`` times the sweep's steps (at least 1)."""
    from lr_verify import steps_per_first_round_step

    return max(1, math.floor(budget * sweep_steps / steps_per_first_round_step(candidates)))


def log_ratio_stats(values: list[float]) -> dict:
    """Mean, spread (standard deviation) and worst (largest magnitude) of log10(best / reading)."""
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    worst = float(arr[np.argmax(np.abs(arr))])
    return {"n": len(values), "mean": round(float(arr.mean()), 3), "sd": round(float(arr.std()), 3),
            "worst": round(worst, 3)}





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
    plateau_bounds: list = field(default_factory=list)
    horizon: dict = field(default_factory=dict)  # lr -> top-1 at twice the epochs
    unstable: dict = field(default_factory=dict)  # lr -> {seed: top-1}: a seed collapsed there
    sweep: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    range: dict = field(default_factory=dict)
    prodigy: dict = field(default_factory=dict)  # the rate-free baseline's top-1 against the grid's
    cost: dict = field(default_factory=dict)
    precisions: list = field(default_factory=list)  # what its runs trained in: more than one is worth saying


def suggestions_from_history(lrs, losses, optimizer: str) -> dict:
    """What main.py's finder would answer from this sweep (rates, range, landmarks), by the code
    as it stands: the rule is applied afresh to the recorded histories."""
    from suggest import SuggestionError, read_curve

    try:
        c = read_curve(lrs, losses, optimizer, "auto")
    except SuggestionError as exc:
        return {"success": False, "error": str(exc)}
    return {"success": True, "suggestions": c.readings, "suggested_lr": c.lr, "suggestion_method": c.method,
            "loss_drop": c.loss_drop, "edge_lr": c.edge_lr, "min_loss_lr": c.min_loss_lr,
            "suggested_range": [c.low, c.high]}


def verified_answer(answer: dict) -> dict:
    """A --lr_verify run's answer in one shape, whether its suggested_lr.json has the groups
    (schema_version 2) or predates them: trials, range, rate, steps, outcome."""
    if answer.get("schema_version") == 2:
        v, a = answer.get("verification") or {}, answer.get("answer") or {}
        return {"verification": v.get("trials"), "suggested_range": [a.get("low"), a.get("high")] if a else None,
                "suggested_lr": answer.get("suggested_lr"), "verify_total_steps": v.get("total_steps"),
                "verify_first_round_steps": v.get("first_round_steps"),
                "verify_outcome": v.get("outcome"), "error": answer.get("error")}
    return answer


def ground_truth(case: Case, runner: Runner, result: CaseResult) -> None:
    """The grid (seed 0), extended and refined around the best rate; the best rate again with the
    noise seeds. A rate where one of those seeds collapses is not a rate to train at: it counts
    at the mean of its seeds, and the best is chosen (and refined, and seeded) again."""
    grid = {lr: runner.train(case, lr, 0) for lr in case.grid}
    for attempt in range(MAX_UNSTABLE + 1):
        for _ in range(MAX_EXTENSIONS + 4):
            new = next_grid_rate(grid)
            if new is None:
                break
            grid[float(f"{new:.6g}")] = runner.train(case, float(f"{new:.6g}"), 0)
        best = max(grid, key=lambda r: (grid[r], -r))
        seeds = {0: grid[best], **{s: runner.train(case, best, s) for s in NOISE_SEEDS}}
        if not seed_collapsed(seeds):
            break
        result.unstable[best] = seeds
        if attempt == MAX_UNSTABLE:  # no stable best found: report the last one, marked unstable
            break
        grid[best] = round(sum(seeds.values()) / len(seeds), 2)
    result.grid = dict(sorted(grid.items()))
    result.best_lr, result.best_top1, result.seeds = best, grid[best], seeds
    result.noise = round(max(result.seeds.values()) - min(result.seeds.values()), 2)
    result.plateau = plateau(result.grid, result.best_top1, result.noise)
    result.plateau_bounds = list(plateau_bounds(result.grid, result.best_top1, result.noise))
    result.cost["train_runs"] = len(result.grid) + len(NOISE_SEEDS) * (1 + len(result.unstable))
    if case.horizon_check:
        rates = sorted(result.grid)
        i = rates.index(result.best_lr)
        for lr in rates[max(0, i - 1):i + 2]:
            result.horizon[lr] = runner.train(case, lr, 0, epochs=2 * case.epochs)


def seed_collapsed(seeds: dict[int, float]) -> bool:
    """Whether one seed's top-1 fell under COLLAPSE_SHARE of the best seed's."""
    return collapsed(min(seeds.values()), max(seeds.values()))


def place_prodigy(top1: float, result: CaseResult) -> dict:
    return {"top1": top1, "minus_best": round(top1 - result.best_top1, 2),
            "not_worse_beyond_noise": top1 >= result.best_top1 - result.noise}


def run_case(case: Case, runner: Runner, verify: bool) -> CaseResult:
    result = CaseResult(case=asdict(case))
    lrs, losses, record = runner.sweep(case)
    result.sweep = {"steps_run": len(lrs), "seconds": record["seconds"], "history": {"lr": lrs, "loss": losses}}
    result.cost["sweep_steps"] = len(lrs)
    ground_truth(case, runner, result)

    answer = suggestions_from_history(lrs, losses, case.optimizer)
    if answer.get("success"):
        for name, lr in answer["suggestions"].items():
            result.methods[name] = place(lr, result.grid, result.noise)
        result.methods["auto"] = place(answer["suggested_lr"], result.grid, result.noise)
        result.sweep.update({key: answer.get(key) for key in
                             ("suggestion_method", "loss_drop", "edge_lr", "min_loss_lr", "suggested_range")})
        low, high = answer.get("suggested_range") or (None, None)
        if low:
            result.range = {"low": low, "high": high, "covers_best": low <= result.best_lr <= high}
    if case.role == "test" and not runner.quick:
        result.prodigy = place_prodigy(runner.train_prodigy(case), result)
    if verify and case.verify_steps:
        place_verify(case, runner, result, "lr_verify", case.verify_steps)
        if case.role == "test" and not runner.quick and result.range:
            from lr_verify import candidate_rates

            count = len(candidate_rates(answer["suggested_lr"], result.range["low"], result.range["high"]))
            steps = budget_steps(count, len(lrs))
            if steps != case.verify_steps:
                place_verify(case, runner, result, "lr_verify_budget", steps)
            elif "lr_verify" in result.methods:  # the same run answers both questions
                result.methods["lr_verify_budget"] = result.methods["lr_verify"]
                result.cost["lr_verify_budget"] = result.cost["lr_verify"]
        if not runner.quick:
            place_verify(case, runner, result, "lr_verify_share", share=VERIFY_SHARE)
    result.precisions = sorted(runner.precisions.get(case.name, set()))
    return result


def same_range(recorded, recomputed) -> bool:
    """Whether a verification's recorded range is the one the rule as it stands gives (else the
    record was made by another rule and its trials tried other rates)."""
    return bool(recorded and recomputed) and all(math.isclose(a, b, rel_tol=1e-6)
                                                 for a, b in zip(recorded, recomputed, strict=True))


def place_verify(case: Case, runner: Runner, result: CaseResult, method: str, steps: int | None = None,
                 share: float | None = None) -> None:
    """``--lr_verify steps`` (or ``--lr_verify_share share``) placed on the curve, with its cost in
    steps, in sweeps and as a share of the case's training (its batches per epoch, from the run's
    JSON, times its epochs); left out, with a line, when it did not verify (main.py refuses a share
    that buys under 2 steps a trial) or when its record comes from another rule."""
    verified, record = runner.verify(case, steps, share)
    verified = verified_answer(verified)
    if not verified.get("verification"):
        print(f"[{case.name}] {method}: the run verified nothing ({verified.get('error') or 'no trials'})")
        return
    history = record.get("history") or {}
    current = suggestions_from_history(history.get("lr", []), history.get("loss", []), case.optimizer)
    if not same_range(verified.get("suggested_range"), current.get("suggested_range")):
        print(f"[{case.name}] {method}: its record was made by another rule; delete "
              f"{Runner.verify_name(case, steps, share)}.json to run it again")
        return
    result.methods[method] = place(verified["suggested_lr"], result.grid, result.noise)
    total = verified.get("verify_total_steps") or 0
    per_epoch = ((record.get("answer") or {}).get("data") or {}).get("batches_per_epoch")
    result.cost[method] = {"first_round_steps": steps or verified.get("verify_first_round_steps"), "steps": total,
                           "sweeps": round(total / result.cost["sweep_steps"], 2),
                           "training_share": training_share(total, per_epoch, case.epochs),
                           "outcome": verified.get("verify_outcome"), "seconds": record["seconds"]}


def training_share(steps: int, batches_per_epoch: int | None, epochs: int) -> float | None:
    """``steps`` as a fraction of a training of ``epochs`` (None when the run did not record its batches)."""
    return round(steps / (batches_per_epoch * epochs), 4) if batches_per_epoch else None


# ------------------------------------------------------------------- output


def summary(results: list[CaseResult]) -> dict:
    """Per method: log10(best / reading) over the cases, and the share in the plateau; the range's
    coverage. Fit and test cases apart."""
    out = {}
    for role in ("fit", "test"):
        rs = [r for r in results if r.case["role"] == role]
        methods = sorted({m for r in rs for m in r.methods})
        out[role] = {
            "cases": len(rs),
            "methods": {m: {**log_ratio_stats([r.methods[m]["log10_best_over_reading"] for r in rs if m in r.methods]),
                            "in_plateau": sum(r.methods[m]["in_plateau"] for r in rs if m in r.methods),
                            "collapsed": sum(r.methods[m]["collapsed"] for r in rs if m in r.methods),
                            **gap_stats([(r.methods[m]["gap"], r.noise) for r in rs if m in r.methods]),
                            **mean_cost(rs, m)}
                        for m in methods},
            "range_covers_best": sum(bool(r.range.get("covers_best")) for r in rs),
        }
    return out


def gap_stats(rows: list[tuple[float, float]]) -> dict:
    """From (top-1 points lost against the best rate, that case's seed noise): the median loss and
    the cases that lost no more than their noise."""
    if not rows:
        return {}
    return {"median_gap": round(float(np.median([gap for gap, _ in rows])), 2),
            "within_noise": sum(lost_within_noise(gap, noise) for gap, noise in rows)}


def mean_cost(results: list[CaseResult], method: str) -> dict:
    """A verification's mean extra cost in sweeps and as a share of the training (empty for a reading
    of the curve, which costs none)."""
    costs = [r.cost[method]["sweeps"] for r in results if method in r.cost]
    shares = [r.cost[method].get("training_share") for r in results if method in r.cost]
    shares = [s for s in shares if s is not None]
    return ({"sweeps": round(sum(costs) / len(costs), 2)} if costs else {}) | (
        {"training_share": round(sum(shares) / len(shares), 4)} if shares else {})


def summary_markdown(report: dict) -> str:
    """The summary as tables: per method, log10(best / reading) and the landings; then the range's
    coverage. Fit and test apart."""
    lines = []
    for role, part in report.items():
        if not part["cases"]:
            continue
        lines += [f"\n{role} cases ({part['cases']}): log10(best / reading), over the cases",
                  "| method | n | mean | sd | worst | in plateau | top-1 lost (median) | lost within the noise "
                  "| collapsed | extra cost (sweeps) | extra cost (share of the training) |", "|---" * 11 + "|"]
        for name, m in part["methods"].items():
            lines.append(f"| {name} | {m['n']} | {m['mean']:+.2f} | {m['sd']:.2f} | {m['worst']:+.2f} | "
                         f"{m['in_plateau']} of {m['n']} | {m['median_gap']:.1f} | {m['within_noise']} of {m['n']} | "
                         f"{m['collapsed']} | {m.get('sweeps', 0):.2f} | {m.get('training_share', 0):.1%} |")
        lines += [f"\nsuggested_range covers the best rate on {part['range_covers_best']} of {part['cases']}"]
    return "\n".join(lines)


def table(results: list[CaseResult]) -> str:
    lines = []
    for role in ("fit", "test"):
        rs = [r for r in results if r.case["role"] == role]
        if not rs:
            continue
        lines += [f"\n{role} cases", "| case | best rate (top-1) | noise | plateau | loss drop | range "
                  "| auto | bottom | rise | steepest | minimum | lr_verify | lr_verify_budget | lr_verify_share | Prodigy |",
                  "|---" * 15 + "|"]
        for r in rs:
            cells = []
            for name in ("auto", "bottom", "rise", "steepest", "minimum", "lr_verify", "lr_verify_budget",
                         "lr_verify_share"):
                m = r.methods.get(name)
                cells.append(f"{m['lr']:.3g} {'in' if m['in_plateau'] else 'out'}"
                             f"{' COLLAPSED' if m['collapsed'] else ''}" if m else "-")
            rng = (f"{r.range['low']:.3g}-{r.range['high']:.3g} {'covers' if r.range['covers_best'] else 'misses'}"
                   if r.range else "-")
            lines.append(f"| {r.case['name']} | {r.best_lr:.3g} ({r.best_top1:.1f}) | {r.noise:.1f} | "
                         f"{r.plateau[0]:.3g}-{r.plateau[-1]:.3g} | {r.sweep.get('loss_drop', 0):.0%} | {rng} | " + " | ".join(cells) +
                         (f" | {r.prodigy['top1']:.1f} ({r.prodigy['minus_best']:+.1f}) |" if r.prodigy else " | - |"))
        lines += [f"- {r.case['name']}: its runs trained in {', '.join(r.precisions)}"
                  for r in rs if len(set(r.precisions) - {"unrecorded"}) > 1]
    return "\n".join(lines)


def plot(results: list[CaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, results):
        rates = list(r.grid)
        ax.plot(rates, [r.grid[x] for x in rates], "o-", color="black", label="val top-1")
        if r.horizon:
            ax.plot(list(r.horizon), list(r.horizon.values()), "s--", color="grey", label="2x epochs")
        ax.axvspan(*r.plateau_bounds, color="green", alpha=0.12, label="plateau")
        if r.range:
            ax.axvspan(r.range["low"], r.range["high"], ymin=0, ymax=0.06, color="tab:blue", alpha=0.6,
                       label="suggested range")
        for name, colour, style, width in (("auto", "tab:red", "-", 2.4), ("lr_verify", "tab:purple", "--", 1.3),
                                           ("lr_verify_budget", "tab:orange", ":", 1.8),
                                           ("lr_verify_share", "tab:brown", "-.", 1.5)):
            if name in r.methods:
                ax.axvline(r.methods[name]["lr"], color=colour, ls=style, lw=width,
                           label=f"{name} {r.methods[name]['lr']:.2g}")
        ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel="best val top-1 (%)", title=f"{r.case['name']} ({r.case['role']})")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one tiny case (about a minute), for the test suite")
    parser.add_argument("--set", choices=("all", "fit", "test"), default="all", help="which cases")
    parser.add_argument("--cases", nargs="*", default=None, help="names of the cases to run (default: the set)")
    parser.add_argument("--records", default=str(REPO / "benchmarks" / "study_records"),
                        help="one small JSON per finished run (commit them: the study resumes from them)")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "suggestion_study"),
                        help="the runs' own outputs (not needed once their records exist)")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--plot", default=None, help="val top-1 against lr per case, plateau and range shaded")
    parser.add_argument("--no_verify", action="store_true", help="skip the --lr_verify runs")
    parser.add_argument("--only_records", action="store_true",
                        help="report from the records alone; cases with a missing run are left out")
    args = parser.parse_args(argv)

    cases = QUICK_CASES if args.quick else {"all": ALL_CASES, "fit": FIT_CASES, "test": TEST_CASES}[args.set]
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    runner = Runner(Path(args.records), Path(args.work_dir), dry=args.only_records, quick=args.quick)
    results = []
    for case in cases:
        try:
            results.append(run_case(case, runner, verify=not args.no_verify))
        except Runner.Missing as missing:
            print(f"[{case.name}] left out: no record of {missing}", flush=True)
    report = summary(results)
    print(table(results))
    print(summary_markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"date": date.today().isoformat(), "summary": report,
                                               "cases": [asdict(r) for r in results]}, indent=1))
    if args.plot and results:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
