"""``--lr_verify N``: check the range test's answer with short, complete trainings.

From the same initial weights, train N steps at a few candidate rates around the suggestion
(x2 apart), each with its own compressed schedule (a short linear warm-up, then cosine decay to
zero: a constant rate would favour small rates over so short a horizon), then measure loss and
top-1 on fixed held-out batches. The candidate with the lowest held-out loss is the trials' best;
when it sits at an edge of the candidates, one more rate beyond it is tried (twice at most).

The trials replace the curve's rate only when their best also beats it clearly on held-out top-1
(more than MARGIN_SE standard errors): trials too short to learn much favour low rates on loss
alone, and a winner inside the noise would be a coin toss dressed up as a measurement.

    trials = verify_rates(model, optimizer, criterion, batches, heldout, center=0.05, steps=100,
                          device=device, amp_dtype=torch.bfloat16)
"""

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from runtime import Distributed, cpu_copy, unwrap
from train import evaluate, lr_multiplier, train_step

CANDIDATES = 5
SPACING = 2.0
MAX_EXTRA = 2
WARMUP_SHARE = 0.1
MARGIN_SE = 2.0  # a top-1 difference counts when it exceeds this many standard errors

CONFIRMED, REPLACED, INCONCLUSIVE = "confirmed", "replaced", "inconclusive"


@dataclass
class Trial:
    lr: float
    loss: float  # held-out loss after the trial (inf when the trial diverged)
    top1: float
    steps: int


def candidate_rates(center: float, count: int = CANDIDATES, spacing: float = SPACING) -> list[float]:
    """``count`` rates ``spacing`` apart, centred on ``center`` in log space."""
    half = (count - 1) / 2
    return [center * spacing ** (i - half) for i in range(count)]


def trial_schedule(step: int, steps: int) -> float:
    """Factor on a trial's rate at ``step``: warm-up over the first tenth, then cosine to zero."""
    warmup = max(1, round(steps * WARMUP_SHARE))
    return lr_multiplier(step, "cosine", steps, steps, warmup)


def best_trial(trials: list[Trial]) -> Trial | None:
    finite = [t for t in trials if math.isfinite(t.loss)]
    return min(finite, key=lambda t: (t.loss, -t.top1)) if finite else None


def next_rate(trials: list[Trial], spacing: float = SPACING) -> float | None:
    """One rate beyond the candidates when the best is at their edge, else None."""
    best = best_trial(trials)
    if best is None:
        return None
    rates = sorted(t.lr for t in trials)
    if best.lr == rates[0]:
        return rates[0] / spacing
    if best.lr == rates[-1]:
        return rates[-1] * spacing
    return None


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
                 amp_dtype=None, channels_last: bool = True, dist: Distributed | None = None,
                 stop_requested=lambda: False) -> tuple[list[Trial], str]:
    """Run the trials; returns them (completed ones only) and why they ended: ``completed`` or
    ``interrupted``. ``batches()`` gives a fresh iterator over training batches, the same
    sequence for every trial; ``heldout`` is a list of batches. The model and optimizer end in
    the state they started in."""
    dist = dist or Distributed(device=device)
    start_model = cpu_copy(unwrap(model).state_dict())
    start_optimizer = cpu_copy(optimizer.state_dict())
    rates = candidate_rates(center)
    trials: list[Trial] = []
    bar = tqdm(total=len(rates) * steps, desc="lr_verify", unit="step", dynamic_ncols=True,
               disable=not dist.is_main)
    reason = "completed"
    try:
        while rates:
            lr = rates.pop(0)
            trials.append(_one_trial(model, optimizer, criterion, batches(), heldout, lr, steps, device, amp_dtype,
                                     channels_last, dist, stop_requested, bar))
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{trials[-1].loss:.3f}")
            if not rates and len(trials) < CANDIDATES + MAX_EXTRA:
                extra = next_rate(trials)
                if extra is not None:
                    rates.append(extra)
                    bar.total += steps
            unwrap(model).load_state_dict(start_model)
            optimizer.load_state_dict(start_optimizer)
    except Interrupted:
        reason = "interrupted"
    finally:
        bar.close()
        unwrap(model).load_state_dict(start_model)
        optimizer.load_state_dict(start_optimizer)
    return sorted(trials, key=lambda t: t.lr), reason


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
