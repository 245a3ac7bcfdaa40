"""``--lr_verify N``: check the range test's answer with short, complete trainings, spending the
budget where it tells (successive halving).

From the same initial weights, every candidate rate (x2 apart, across the suggested range, the
curve's answer among them) trains N steps with its own compressed schedule (a short linear
warm-up, then cosine decay to zero: a constant rate would favour small rates over so short a
horizon) and is scored on fixed held-out batches. The better half (lowest held-out loss) trains
again from the start for 2N steps, the better half of those for 4N, until two remain: the better
of the last round is the trials' answer. Short trials are biased (toward low rates, the
short-horizon bias, and over the very first steps sometimes toward high ones); survivors judged
on longer horizons correct part of it.

When the curve's answer reaches the last round, the trials replace it only when their best also
beats it clearly on held-out top-1 (more than MARGIN_SE standard errors): a winner inside the
noise would be a coin toss dressed up as a measurement. An answer knocked out earlier is replaced.

    trials = verify_rates(model, optimizer, criterion, batches, heldout, center=0.05, steps=10,
                          device=device, low=0.0125, high=0.4, amp_dtype=torch.bfloat16)
"""

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from runtime import Distributed, cpu_copy, unwrap
from suggest import RANGE_FACTORS
from train import evaluate, train_step
from train_setup import lr_multiplier

SPACING = 2.0
WARMUP_SHARE = 0.1
MARGIN_SE = 2.0  # a top-1 difference counts when it exceeds this many standard errors

CONFIRMED, REPLACED, INCONCLUSIVE = "confirmed", "replaced", "inconclusive"


@dataclass
class Trial:
    lr: float
    loss: float  # held-out loss after the trial (inf when the trial diverged)
    top1: float
    steps: int


def candidate_rates(center: float, low: float, high: float, spacing: float = SPACING) -> list[float]:
    """``center`` times every power of ``spacing`` that lies in [low, high] (``center`` always among them)."""
    step = math.log(spacing)
    k_low = min(0, math.ceil(math.log(low / center) / step - 1e-9))
    k_high = max(0, math.floor(math.log(high / center) / step + 1e-9))
    return [center * spacing ** k for k in range(k_low, k_high + 1)]


def halving_rounds(candidates: int, steps: int) -> list[tuple[int, int]]:
    """(trials, steps each) per round: all candidates for ``steps``, then the better half for twice
    as many, until two remain (a single candidate gets one round)."""
    rounds = [(candidates, steps)]
    while rounds[-1][0] > 2:
        rounds.append((math.ceil(rounds[-1][0] / 2), rounds[-1][1] * 2))
    return rounds


def steps_per_first_round_step(candidates: int) -> int:
    """Steps all the rounds take for each step of the first round (5 rates: 5 + 3 x 2 + 2 x 4 = 19)."""
    return sum(trials * steps for trials, steps in halving_rounds(candidates, 1))


def first_round_for_budget(candidates: int, budget_steps: float) -> int:
    """The largest first-round N whose rounds over ``candidates`` rates cost at most ``budget_steps``
    in all; 0 when that is under 2 steps a trial."""
    n = math.floor(budget_steps / steps_per_first_round_step(candidates) + 1e-9)
    return n if n >= 2 else 0


def most_candidates(optimizer: str) -> int:
    """The most rates a verification can try: x2 apart across the widest range the rule gives."""
    below, above = RANGE_FACTORS["adamw" if optimizer == "adamw" else "sgd"]
    return len(candidate_rates(1.0, 1 / below, above))


def trial_schedule(step: int, steps: int) -> float:
    """Factor on a trial's rate at ``step``: warm-up over the first tenth, then cosine to zero."""
    warmup = max(1, round(steps * WARMUP_SHARE))
    return lr_multiplier(step, "cosine", steps, steps, warmup)


def best_trial(trials: list[Trial]) -> Trial | None:
    finite = [t for t in trials if math.isfinite(t.loss)]
    return min(finite, key=lambda t: (t.loss, -t.top1)) if finite else None


def better_half(trials: list[Trial], keep: int) -> list[float]:
    """The rates of the ``keep`` best trials (lowest held-out loss; diverged ones last), low to high."""
    ranked = sorted(trials, key=lambda t: (not math.isfinite(t.loss), t.loss, -t.top1))
    return sorted(t.lr for t in ranked[:keep])


def clearly_better(top1: float, than: float, images: int, margin: float = MARGIN_SE) -> bool:
    """Whether held-out top-1 ``top1`` (%) beats ``than`` (%) on the same ``images`` images by more
    than ``margin`` standard errors of the difference (pooled two-proportion z-test) and by at
    least one image."""
    if images <= 0:
        return False
    p = (top1 + than) / 200
    se = math.sqrt(2 * p * (1 - p) / images)
    return (top1 - than) / 100 > max(margin * se, 1 / images)


def judge(trials: list[Trial], center: float, images: int) -> tuple[Trial | None, str]:
    """What the trials say about the curve's rate ``center`` (one of the candidates), scored on
    ``images`` held-out images: (the trial to use, outcome).

    - ``confirmed``: the best trial (lowest held-out loss) is the centre itself;
    - ``replaced``: another trial is best and its top-1 clearly beats the centre's;
    - ``inconclusive`` (no trial to use): another trial is best on loss, but not clearly on
      top-1, or the centre's trial never finished."""
    best = best_trial(trials)
    centre = next((t for t in trials if math.isclose(t.lr, center, rel_tol=1e-9)), None)
    if best is None or centre is None or len(trials) < 2:
        return None, INCONCLUSIVE
    if best is centre:
        return best, CONFIRMED
    if clearly_better(best.top1, centre.top1 if math.isfinite(centre.loss) else 0.0, images):
        return best, REPLACED
    return None, INCONCLUSIVE


class Interrupted(Exception):
    pass


def verify_rates(model, optimizer, criterion, batches, heldout, center: float, steps: int, device,
                 low: float | None = None, high: float | None = None, amp_dtype=None, channels_last: bool = True,
                 dist: Distributed | None = None, stop_requested=lambda: False) -> tuple[list[list[Trial]], str]:
    """Run the rounds of trials over the candidates in [low, high] (default: x4 around ``center``);
    returns the completed trials per round and why they ended: ``completed`` or ``interrupted``.
    ``batches()`` gives a fresh iterator over training batches, the same sequence for every trial;
    ``heldout`` is a list of batches. The model and optimizer end in the state they started in."""
    dist = dist or Distributed(device=device)
    start_model = cpu_copy(unwrap(model).state_dict())
    start_optimizer = cpu_copy(optimizer.state_dict())
    rates = candidate_rates(center, low or center / 4, high or center * 4)
    plan = halving_rounds(len(rates), steps)
    rounds: list[list[Trial]] = []
    bar = tqdm(total=sum(n * k for n, k in plan), desc="lr_verify", unit="step", dynamic_ncols=True,
               disable=not dist.is_main)
    reason = "completed"
    try:
        for number, (_, round_steps) in enumerate(plan):
            if number:
                rates = better_half(rounds[-1], plan[number][0])
            rounds.append([])
            for lr in rates:
                rounds[-1].append(_one_trial(model, optimizer, criterion, batches(), heldout, lr, round_steps, device,
                                             amp_dtype, channels_last, dist, stop_requested, bar))
                bar.set_postfix(lr=f"{lr:.2e}", steps=round_steps, loss=f"{rounds[-1][-1].loss:.3f}")
                unwrap(model).load_state_dict(start_model)
                optimizer.load_state_dict(start_optimizer)
    except Interrupted:
        reason = "interrupted"
    finally:
        bar.close()
        unwrap(model).load_state_dict(start_model)
        optimizer.load_state_dict(start_optimizer)
    return [r for r in rounds if r], reason


def outcome(rounds: list[list[Trial]], center: float, images: int) -> tuple[Trial | None, str]:
    """What the rounds say about the curve's rate ``center``: ``judge`` on the last round when the
    centre reached it; else the last round's best replaces it (it lost on an equal horizon)."""
    if not rounds:
        return None, INCONCLUSIVE
    last = rounds[-1]
    if any(math.isclose(t.lr, center, rel_tol=1e-9) for t in last) or len(rounds) == 1:
        return judge(last, center, images)
    best = best_trial(last)
    return (best, REPLACED) if best is not None else (None, INCONCLUSIVE)


def _one_trial(model, optimizer, criterion, batch_iter, heldout, lr, steps, device, amp_dtype, channels_last,
               dist, stop_requested, bar) -> Trial:
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model.train()
    for step in range(steps):
        # Every rank must stop at the same step: the request travels in an all-reduce.
        if dist.all_reduce_sum([float(stop_requested())])[0]:
            raise Interrupted
        for group in optimizer.param_groups:
            group["lr"] = lr * trial_schedule(step, steps)
        images, labels, _ = next(batch_iter)
        loss, _, _ = train_step(model, images, labels, criterion, optimizer, scaler, device, amp_dtype, channels_last)
        bar.update(1)
        if not math.isfinite(dist.all_reduce_sum([loss.item()])[0]):
            bar.update(steps - step - 1)
            return Trial(lr, math.inf, 0.0, step + 1)
    metrics = evaluate(model, heldout, criterion, device, amp_dtype, channels_last, dist, progress=False)
    return Trial(lr, metrics["val_loss"], metrics["val_top1"], steps)
