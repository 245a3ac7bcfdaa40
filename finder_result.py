"""The range test's result, typed: built once by the workflow (``find_lr.py``), then only read by
what renders it: the console lines and the log (``report.py``), the plot (``lr_plot.py``) and
``suggested_lr.json`` (``to_json``). ``from_json`` reads the file back (``run_lr_finder.py``
renders the full log from it). No torch here.

The JSON keeps the fields users script against at the top (``suggested_lr``, ``dataset``,
``batch_size``, ``lr_finder_epochs``, ``plot_file``, ``log_file``, ``timestamp``) and groups the
rest: ``answer``, ``curve``, ``sweep``, ``verification``, ``data``, ``machine``, ``configuration``.
"""

from dataclasses import asdict, dataclass, field, fields

from suggest import SHALLOW_FALL, VERY_HIGH_LR, VERY_LOW_LR, CurveReading

SCHEMA_VERSION = 2
# The suggestion rule's version (the date it was frozen) and where it is measured.
RULE_VERSION = "2026-12-06"
RULE_DOC = "docs/suggestion_study.md"
STOPPED_BY_THE_LOSS = ("diverged", "non_finite_loss")  # how a range test normally ends


@dataclass(frozen=True)
class Answer:
    """The rate to train with and what it belongs to."""
    lr: float
    method: str  # the reading that gave it (rise, minimum, steepest, valley), or "verified"
    low: float  # the range where the best rate of a full training is expected
    high: float
    optimizer: str
    global_batch_size: int
    rate_settings: dict = field(default_factory=dict)  # the settings that move the rate (settings.py)
    recipe: str | None = None
    recipe_lr: float | None = None  # the recipe's own rate at this global batch, for comparison
    warnings: tuple[str, ...] = ()  # only ones the user can act on
    rule: str = RULE_VERSION
    rule_doc: str = RULE_DOC


@dataclass(frozen=True)
class SweepFacts:
    """How the sweep ran and ended."""
    lr_start: float
    lr_end: float
    lr_iter: int
    lr_step_mode: str
    steps_run: int
    stop_reason: str  # completed, diverged, non_finite_loss or interrupted
    stop_step: int | None = None
    stop_lr: float | None = None
    curve: str = "training"  # the loss the answer reads: training, or validation (--lr_advanced)
    world_size: int = 1
    bad_images: int = 0
    skipped_steps: tuple[int, ...] = ()
    elapsed_s: float = 0.0
    images_per_second: float | None = None

    @property
    def stopped_by_the_loss(self) -> bool:
        return self.stop_reason in STOPPED_BY_THE_LOSS


@dataclass(frozen=True)
class Trial:
    round: int
    lr: float
    loss: float | None  # held-out loss after the trial; None when it diverged
    top1: float
    steps: int


@dataclass(frozen=True)
class Verification:
    """``--lr_verify``: the short trainings around the curve's answer and what they concluded."""
    first_round_steps: int
    total_steps: int
    heldout_source: str
    heldout_images: int
    stop_reason: str
    outcome: str  # confirmed, replaced or inconclusive (lr_verify)
    elapsed_s: float
    trials: tuple[Trial, ...] = ()
    chosen_lr: float | None = None
    planned_steps: int | None = None  # the training --epochs plans, in steps: the trials' cost is a share of it
    budget_share: float | None = None  # --lr_verify_share's percentage, when N was chosen from it


@dataclass(frozen=True)
class FinderResult:
    success: bool
    dataset: str
    batch_size: int
    timestamp: str
    plot_file: str | None
    log_file: str
    history_file: str | None = None
    error: str | None = None
    answer: Answer | None = None
    curve: CurveReading | None = None  # the curve's own reading, before any verification
    training_curve_readings: dict | None = None  # --lr_advanced: the training loss's readings too
    sweep: SweepFacts | None = None
    verification: Verification | None = None
    data: dict = field(default_factory=dict)  # the data's folder and layout
    machine: dict = field(default_factory=dict)  # device, precision, channels_last
    configuration: dict = field(default_factory=dict)  # every flag, as the run used it

    @property
    def suggested_lr(self) -> float | None:
        return self.answer.lr if self.answer else None

    @property
    def lr_finder_epochs(self) -> float:
        """The share of an epoch the sweep's steps covered (the spec's field)."""
        per_epoch = self.data.get("batches_per_epoch")
        if not self.sweep or not per_epoch:
            return 0.0
        return round(self.sweep.steps_run / per_epoch, 4)

    def to_json(self) -> dict:
        """suggested_lr.json: the top-level fields, then the groups; NaN and infinities as null."""
        groups = {name: None if value is None else asdict(value)
                  for name, value in (("answer", self.answer), ("curve", self.curve), ("sweep", self.sweep),
                                      ("verification", self.verification))}
        if self.training_curve_readings is not None:
            groups["training_curve_readings"] = self.training_curve_readings
        return json_safe({
            "suggested_lr": self.suggested_lr,
            "dataset": self.dataset,
            "batch_size": self.batch_size,
            "lr_finder_epochs": self.lr_finder_epochs,
            "plot_file": self.plot_file,
            "log_file": self.log_file,
            "timestamp": self.timestamp,
            "history_file": self.history_file,
            "success": self.success,
            "error": self.error,
            "schema_version": SCHEMA_VERSION,
            **groups,
            "data": self.data,
            "machine": self.machine,
            "configuration": self.configuration,
        })

    @classmethod
    def from_json(cls, record: dict) -> "FinderResult":
        """The result a ``suggested_lr.json`` holds (``schema_version`` 2); ValueError if it is not one."""
        if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not a suggested_lr.json of schema_version {SCHEMA_VERSION}")
        try:
            verification = record.get("verification")
            if verification:
                verification = build(Verification, {**verification, "trials": tuple(
                    build(Trial, t) for t in verification.get("trials") or ())})
            return cls(
                success=record["success"], dataset=record["dataset"], batch_size=record["batch_size"],
                timestamp=record["timestamp"], plot_file=record["plot_file"], log_file=record["log_file"],
                history_file=record.get("history_file"), error=record.get("error"),
                answer=build(Answer, record.get("answer"), warnings=tuple),
                curve=build(CurveReading, record.get("curve")),
                training_curve_readings=record.get("training_curve_readings"),
                sweep=build(SweepFacts, record.get("sweep"), skipped_steps=tuple),
                verification=verification or None, data=record.get("data") or {},
                machine=record.get("machine") or {}, configuration=record.get("configuration") or {})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a field is missing or of the wrong kind ({exc})") from None


def build(kind, values: dict | None, **converters):
    """``kind(**values)`` with the named fields converted (lists back to tuples); None stays None."""
    if values is None:
        return None
    names = {f.name for f in fields(kind)}
    return kind(**{k: converters[k](v) if k in converters and v is not None else v
                   for k, v in values.items() if k in names})


def json_safe(value):
    """NaN and infinities become None, so the JSON stays strict."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def answer_warnings(lr: float, curve: CurveReading, verification: Verification | None) -> tuple[str, ...]:
    """The warnings a user can act on, each with what to do."""
    warnings = []
    if lr < VERY_LOW_LR:
        warnings.append(f"the rate {lr:.2e} is very low (under {VERY_LOW_LR:g}): the loss may not have started "
                        "falling before the sweep ended; try a lower --lr_start or more steps (--lr_iter)")
    if lr > VERY_HIGH_LR:
        warnings.append(f"the rate {lr:.2e} is very high (over {VERY_HIGH_LR:g}): training may diverge; start "
                        "at a tenth of it and watch the first epoch")
    if curve.edge_lr is None:
        warnings.append("the loss never turned up, so its lowest point is only where the sweep ended and the answer "
                        "starts from a tenth of that rate; "
                        "raise --lr_end to see where training becomes unstable")
    if curve.loss_drop < SHALLOW_FALL:
        warnings.append(f"the loss fell only {curve.loss_drop:.0%}: the sweep barely learned, so the curve shows "
                        "little more than where training becomes unstable; more steps (--lr_iter), a larger "
                        "batch, or --lr_verify N (short trainings across the range) give a firmer answer")
    if verification is not None and verification.chosen_lr is not None and verification.trials:
        rates = [t.lr for t in verification.trials]
        if not min(rates) < verification.chosen_lr < max(rates):
            warnings.append("--lr_verify's best rate was the edge of the rates it tried, so the best may lie "
                            "beyond; see the verification panel of the plot")
    if verification is not None and verification.outcome == "inconclusive":
        warnings.append("--lr_verify's trials did not beat the curve's rate by more than the held-out noise, so "
                        "the answer stays the curve's; a larger N or more held-out images would tell")
    return tuple(warnings)
