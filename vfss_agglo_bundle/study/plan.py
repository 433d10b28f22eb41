"""The runs of the study: arms, protocols, seeds, label fractions, and each run's identity (fingerprint).

Two protocols, both standard in the agglomeration literature:

- ``probe``: the distilled encoder frozen (batch norm too), only the light decoder trained: what distillation put
  into the encoder;
- ``finetune``: stage 2 as the default run does it.

Arms (the teachers ``litemedsam``, ``hog``, ``hed`` and ``ct_clip_r152``; ``all4`` is all four):

- probe, every arm: ``scratch``, each teacher alone, ``all4-fixed``, ``all4-attention``, each of those two with
  PHI-S (``-phis``), ``all4-uncertainty``, then ``all4-mlp`` (with PHI-S if it helped attention) and the best pair
  (the two best single teachers by probe validation Dice);
- finetune: ``scratch``, ``default`` (the default run's teachers and balancer), the best single teacher and ``all4``
  with the best balancer (both by probe validation Dice), specialists for bolus, hyoid and c4 (the default arm's
  stage 1, one task each), and label efficiency: ``scratch`` and ``all4`` on 1/8, 1/4 and 1/2 of the training
  studies at the same number of optimizer steps (epochs and validation interval scaled by 1 / fraction).

Budget: every run but the convergence arms trains ``STUDY_EPOCHS`` (32 distillation and 40 segmentation epochs;
label fractions: the same optimizer steps), twice the default run's (16 + 20, configs/train.yaml): the default
run's budget is not converged (doubling it gained 0.034 test mean Dice), and on 2 CPU cores twice it is what the
study can afford (four times gained 0.019 more: see docs/study.md).
Convergence (seed 0), the default arm named by its epochs: ``default-e16-20`` is the default run itself,
``default-e32-20`` and ``default-e16-40`` double one of its stages, ``default-e64-80`` doubles the study's budget.

A probe run and a finetune run with the same teachers, balancer, standardisation and seed share one stage 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALL_TEACHERS",
    "CONVERGENCE_ARMS",
    "DEFAULT_OVERRIDES",
    "DEFAULT_RUN_ARM",
    "DOUBLED_ARM",
    "FRACTIONS",
    "PROTOCOLS",
    "SPECIALIST_TASKS",
    "STUDY_BASE",
    "STUDY_EPOCHS",
    "Choices",
    "Run",
    "candidate_defaults",
    "choose",
    "plan_runs",
    "run_fingerprint",
]

ALL_TEACHERS: tuple[str, ...] = ("litemedsam", "hog", "hed", "ct_clip_r152")
DEFAULT_TEACHERS: tuple[str, ...] = ("litemedsam", "hog")
DEFAULT_OVERRIDES: dict[str, Any] = {"teachers": list(DEFAULT_TEACHERS), "balancing": "attention"}
PROTOCOLS: dict[str, dict[str, Any]] = {"probe": {"freeze_encoder": True}, "finetune": {}}
# the settings an arm leaves unsaid, given to every run (not part of its fingerprint: they are the configs' defaults
# the study was planned with), so that adopting another default in configs/ cannot change a planned run
STUDY_BASE: dict[str, Any] = {"balancing": "attention", "standardize": "none"}
SPECIALIST_TASKS: tuple[str, ...] = ("bolus", "hyoid", "c4")
FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5)
FORMAT = "vfss-agglo study run 1"
DISTILL_EPOCHS, SEG_EPOCHS = 16, 20  # the default run's (configs/train.yaml)
STUDY_EPOCHS: dict[str, int] = {"distill_epochs": 2 * DISTILL_EPOCHS, "seg_epochs": 2 * SEG_EPOCHS}  # every run's
VAL_INTERVAL = 2  # stage 2's (configs/train.yaml), scaled with the epochs for label fractions


DEFAULT_RUN_ARM = "default-e16-20"  # the default arm at the default run's budget: the default run itself
DOUBLED_ARM = "default-e64-80"  # the default arm at twice the study's budget: is the study's budget converged?
CONVERGENCE_ARMS: dict[str, dict[str, int]] = {  # the default arm, named by its epochs (stage 1, stage 2)
    DEFAULT_RUN_ARM: {"distill_epochs": DISTILL_EPOCHS, "seg_epochs": SEG_EPOCHS},
    "default-e32-20": {"distill_epochs": 32, "seg_epochs": 20},  # one stage doubled from the default run's
    "default-e16-40": {"distill_epochs": 16, "seg_epochs": 40},
    DOUBLED_ARM: {"distill_epochs": 64, "seg_epochs": 80},
}


@dataclass(frozen=True)
class Run:
    """One training run of the study: arm, protocol, seed and the config overrides that define it.

    ``group``: ``teachers``, ``balancers``, ``specialists``, ``labels`` or ``convergence``.
    """

    arm: str
    protocol: str
    seed: int
    group: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<arm>-<protocol>-s<seed>``: its summary is ``docs/study/runs/<name>.json``."""
        return f"{self.arm}-{self.protocol}-s{self.seed}"

    @property
    def stage1_key(self) -> str:
        """What stage 1 depends on here: teachers, balancer, standardisation and its epochs (``""``: no stage 1)."""
        teachers = self.overrides.get("teachers", [])
        if not teachers:
            return ""
        get = self.overrides.get
        return json.dumps([teachers, get("balancing", "attention"), get("standardize", "none"), get("distill_epochs")])

    def config_overrides(self) -> dict[str, Any]:
        """The protocol's and the arm's overrides, as given to ``training``."""
        return {**PROTOCOLS[self.protocol], **self.overrides}


@dataclass(frozen=True)
class Choices:
    """Decisions the probe results make for the later runs (``None`` until those probe runs are done)."""

    best_single: str | None = None  # by probe validation mean Dice
    best_pair: tuple[str, str] | None = None  # the two best single teachers
    phis_helps_attention: bool | None = None
    best_balancer: str | None = None  # at four teachers, e.g. "attention-phis"


def _all4(balancer: str) -> dict[str, Any]:
    """The four teachers with ``balancer`` (``"fixed"``, ``"attention-phis"``, ...)."""
    name, _, phis = balancer.partition("-")
    return {"teachers": list(ALL_TEACHERS), "balancing": name, **({"standardize": "phi_s"} if phis else {})}


def _fraction_overrides(fraction: float) -> dict[str, Any]:
    scale = round(1 / fraction)
    seg_epochs = STUDY_EPOCHS["seg_epochs"] * scale
    return {"labelled_fraction": fraction, "seg_epochs": seg_epochs, "val_interval": VAL_INTERVAL * scale}


NO_CHOICES = Choices()


def plan_runs(seeds: Sequence[int] = (0, 1, 2), choices: Choices = NO_CHOICES) -> list[Run]:
    """Every run the study can plan now, in the order to run them (probe first: later runs reuse its stage 1 and
    its choices). Runs that wait for a choice appear once it is made."""
    runs: list[Run] = []

    def add(arm: str, protocol: str, group: str, overrides: Mapping[str, Any]) -> None:
        runs.extend(Run(arm, protocol, seed, group, {**STUDY_EPOCHS, **overrides}) for seed in seeds)

    add("scratch", "probe", "teachers", {"teachers": []})
    for teacher in ALL_TEACHERS:
        add(teacher, "probe", "teachers", {"teachers": [teacher]})
    for balancer in ("attention", "fixed", "attention-phis", "fixed-phis", "uncertainty"):
        add(f"all4-{balancer}", "probe", "balancers", _all4(balancer))
    if choices.phis_helps_attention is not None:
        mlp = "mlp-phis" if choices.phis_helps_attention else "mlp"
        add(f"all4-{mlp}", "probe", "balancers", _all4(mlp))
    if choices.best_pair is not None:
        add("pair-" + "+".join(choices.best_pair), "probe", "teachers", {"teachers": list(choices.best_pair)})

    add("scratch", "finetune", "teachers", {"teachers": []})
    add("default", "finetune", "teachers", DEFAULT_OVERRIDES)
    for task in SPECIALIST_TASKS:
        add(f"{task}-specialist", "finetune", "specialists", {**DEFAULT_OVERRIDES, "tasks": [task]})
    for fraction in FRACTIONS:
        add(f"scratch-f{fraction:g}", "finetune", "labels", {"teachers": [], **_fraction_overrides(fraction)})
    if choices.best_single is not None:
        add(choices.best_single, "finetune", "teachers", {"teachers": [choices.best_single]})
    if choices.best_balancer is not None:
        best = _all4(choices.best_balancer)
        add(f"all4-{choices.best_balancer}", "finetune", "teachers", best)
        for fraction in FRACTIONS:
            add(f"all4-{choices.best_balancer}-f{fraction:g}", "finetune", "labels",
                {**best, **_fraction_overrides(fraction)})  # fmt: skip
    for arm, epochs in CONVERGENCE_ARMS.items():  # the default arm with other epochs in one or both stages
        runs.append(Run(arm, "finetune", seeds[0], "convergence", {**DEFAULT_OVERRIDES, **epochs}))
    order = {seed: i for i, seed in enumerate(seeds)}
    return sorted(runs, key=lambda run: order[run.seed])  # seed by seed: a stopped study has every arm's first seeds


def candidate_defaults(seeds: Sequence[int], choices: Choices) -> dict[str, dict[str, Any]]:
    """Arm -> overrides of every candidate default planned now (the finetune arms of all tasks and labels), at the
    default run's budget (configs/train.yaml's epochs, not the study's): what its whole default run is timed with."""
    return {r.arm: {k: v for k, v in r.config_overrides().items() if k not in STUDY_EPOCHS}
            for r in plan_runs(seeds, choices)
            if r.protocol == "finetune" and r.group == "teachers" and r.seed == seeds[0]}  # fmt: skip


def run_fingerprint(run: Run, common: Mapping[str, Any], device_type: str) -> str:
    """sha256 of what defines a run's result: its overrides, protocol and seed, the settings shared by every run
    (``common``: dataset and budget) and the device type (``cpu`` / ``cuda``: never mixed within a comparison)."""
    payload = {"format": FORMAT, "run": run.name, "overrides": run.config_overrides(), "seed": run.seed,
               "common": dict(common), "device": device_type}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _probe_validation(summaries: Mapping[str, Mapping[str, Any]], arm: str, seeds: Sequence[int]) -> float | None:
    """Mean probe validation Dice of ``arm`` over ``seeds``; None until every seed's run is done."""
    found = [summaries.get(f"{arm}-probe-s{seed}") for seed in seeds]
    if any(s is None for s in found):
        return None
    return sum(s["validation_mean_dice"] for s in found) / len(found)


def choose(summaries: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> Choices:
    """The choices the finished probe runs make (by validation mean Dice, never test), each once its runs are done."""
    singles = {t: _probe_validation(summaries, t, seeds) for t in ALL_TEACHERS}
    ranked = sorted(singles, key=lambda t: -singles[t]) if None not in singles.values() else None
    attention = _probe_validation(summaries, "all4-attention", seeds)
    attention_phis = _probe_validation(summaries, "all4-attention-phis", seeds)
    helps = None if attention is None or attention_phis is None else attention_phis > attention
    best_balancer = None
    if helps is not None:
        names = ["attention", "fixed", "attention-phis", "fixed-phis", "uncertainty", "mlp-phis" if helps else "mlp"]
        scores = {name: _probe_validation(summaries, f"all4-{name}", seeds) for name in names}
        if None not in scores.values():
            best_balancer = max(names, key=lambda name: scores[name])
    return Choices(
        best_single=ranked[0] if ranked else None,
        best_pair=tuple(sorted(ranked[:2], key=ALL_TEACHERS.index)) if ranked else None,
        phis_helps_attention=helps,
        best_balancer=best_balancer,
    )
