"""The study report, rebuilt from the committed run summaries alone (``docs/study/runs/*.json``): per-arm tables,
paired differences with 95% bootstrap intervals for the study's six questions, the default it picks (with the
candidate defaults' whole-run timings, ``docs/study/default_runs.json``), and one figure.

Everything is deterministic (sorted inputs, a fixed bootstrap seed, no dates), so ``scripts/study.py report`` gives
the same ``docs/study.md`` byte for byte on any machine. A question whose runs are not all done yet says which are
missing instead of answering.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vfss_agglo_bundle.study.plan import (
    ALL_TEACHERS,
    CONVERGENCE_ARMS,
    DEFAULT_RUN_ARM,
    DISTILL_EPOCHS,
    DOUBLED_ARM,
    FRACTIONS,
    SEG_EPOCHS,
    SPECIALIST_TASKS,
    STUDY_EPOCHS,
    Run,
    candidate_defaults,
    choose,
    plan_runs,
)
from vfss_agglo_bundle.study.runner import load_summaries
from vfss_agglo_bundle.study.timing import BAR_MINUTES
from vfss_agglo_bundle.utils.io import DataFormatError, atomic_path, read_json, write_text

__all__ = [
    "Comparison",
    "bootstrap_difference",
    "bootstrap_mean",
    "compare",
    "default_pick",
    "load_timings",
    "markdown",
    "write_report",
]

RESAMPLES = 10_000
Summaries = Mapping[str, Mapping[str, Any]]
Timings = Mapping[str, Mapping[str, Any]]  # arm -> its whole default run's timing (docs/study/default_runs.json)
Comparison = dict[str, Any]
TRAINING_STUDIES = 80  # the default phantom's training split


def _bootstrap(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_seeds, n_studies = values.shape
    rows = rng.integers(0, n_seeds, (resamples, n_seeds))
    cols = rng.integers(0, n_studies, (resamples, n_studies))
    samples = values[rows[:, :, None], cols[:, None, :]]  # [resamples, seeds, studies]
    return samples.reshape(resamples, -1).mean(axis=1)


def bootstrap_difference(differences: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, ...]:
    """Mean and 95% percentile bootstrap interval of ``[seeds, studies]`` paired differences, resampling seeds and
    test studies (both with replacement)."""
    values = np.asarray(differences, dtype=float)
    low, high = np.percentile(_bootstrap(values, resamples, seed), [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


bootstrap_mean = bootstrap_difference  # the same interval, of ``[seeds, studies]`` values rather than differences


def _runs(summaries: Summaries, arm: str, protocol: str) -> dict[int, Mapping[str, Any]]:
    prefix = f"{arm}-{protocol}-s"
    return {s["seed"]: s for name, s in summaries.items() if name.startswith(prefix) and name[len(prefix) :].isdigit()}


def _study_values(summary: Mapping[str, Any], task: str) -> dict[str, float]:
    return {study: values[task] for study, values in summary["test"]["studies"].items() if task in values}


def compare(summaries: Summaries, a: tuple[str, str], b: tuple[str, str], task: str = "mean") -> Comparison | None:
    """Paired difference ``a - b`` of test Dice (``(arm, protocol)`` each) over their common seeds and test studies,
    with its 95% bootstrap interval; None when they share no seed or one was run on another device type."""
    runs_a, runs_b = _runs(summaries, *a), _runs(summaries, *b)
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds or {runs_a[s]["device"] for s in seeds} != {runs_b[s]["device"] for s in seeds}:
        return None
    per_seed = [(_study_values(runs_a[s], task), _study_values(runs_b[s], task)) for s in seeds]
    studies = sorted(set.intersection(*(set(x) & set(y) for x, y in per_seed)))
    differences = np.array([[x[st] - y[st] for st in studies] for x, y in per_seed])
    mean, low, high = bootstrap_difference(differences)
    return {"a": a, "b": b, "task": task, "seeds": len(seeds), "mean": mean, "low": low, "high": high}


def _verdict(c: Comparison) -> str:
    if c["low"] > 0:
        return "better (CI excludes 0)"
    if c["high"] < 0:
        return "worse (CI excludes 0)"
    return "no difference shown (CI includes 0)"


def _label(side: tuple[str, str]) -> str:
    return f"{side[0]} ({side[1]})"


def _comparison_rows(comparisons: Sequence[Comparison | None]) -> list[str]:
    rows = ["| a - b | task | seeds | difference | 95% CI | verdict |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        if c is not None:
            rows.append(f"| {_label(c['a'])} - {_label(c['b'])} | {c['task']} | {c['seeds']} | {c['mean']:+.4f} | "
                        f"[{c['low']:+.4f}, {c['high']:+.4f}] | {_verdict(c)} |")  # fmt: skip
    return rows if len(rows) > 2 else ["(runs not done yet)"]


def _tasks_driving(summaries: Summaries, a: tuple[str, str], b: tuple[str, str], tasks: Sequence[str]) -> list[str]:
    """Per-task differences whose interval excludes 0, for a comparison of the mean."""
    found = [compare(summaries, a, b, task) for task in tasks]
    return [f"{c['task']} {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" for c in found
            if c is not None and (c["low"] > 0 or c["high"] < 0)]  # fmt: skip


def _mean_or_dash(values: Sequence[float | None]) -> str:
    """Mean of the values that exist, or ``-`` (a task present in every test frame has no false-positive rate)."""
    found = [v for v in values if v is not None]
    return f"{np.mean(found):.4f}" if found else "-"


def _arm_table(summaries: Summaries, protocol: str) -> list[str]:
    arms: dict[str, list[Mapping[str, Any]]] = {}
    for _, s in sorted(summaries.items()):
        if s["protocol"] == protocol:
            arms.setdefault(s["arm"], []).append(s)
    header = (
        "| arm | seeds | test mean Dice | Dice (present) | FP rate (absent) | validation mean Dice | CPU min / run |"
    )
    rows = [header, "|---|---|---|---|---|---|---|"]
    for arm, runs in arms.items():
        mean = [r["test"]["tasks"]["mean"] for r in runs]
        dice = np.array([m["dice"] for m in mean])
        cpu = [r["cpu_minutes"] for r in runs if r["device"] == "cpu"]
        rows.append(
            f"| {arm} | {len(runs)} | {dice.mean():.4f} +- {dice.std():.4f} | "
            f"{_mean_or_dash([m['dice_present'] for m in mean])} | {_mean_or_dash([m['fp_rate'] for m in mean])} | "
            f"{np.mean([r['validation_mean_dice'] for r in runs]):.4f} | "
            f"{(f'{np.mean(cpu):.1f}' if cpu else '-')} |"
        )
    return rows if len(rows) > 2 else ["(no runs yet)"]


def _last_quarter(curve: Mapping[str, float]) -> tuple[float, float]:
    """Validation Dice at the last check at or before 3/4 of stage 2, and at its last check."""
    epochs = sorted(int(e) for e in curve)
    quarter = max((e for e in epochs if e <= 0.75 * epochs[-1]), default=epochs[0])
    return curve[str(quarter)], curve[str(epochs[-1])]


def _convergence_table(summaries: Summaries) -> list[str]:
    """Per arm and protocol, mean over seeds: stage 2's validation Dice by 3/4 of its epochs and at its last check."""
    arms: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _, s in sorted(summaries.items()):
        if s.get("validation_curve"):
            arms.setdefault((s["arm"], s["protocol"]), []).append(_last_quarter(s["validation_curve"]))
    rows = [
        "| arm | protocol | seeds | validation Dice by 3/4 of stage 2 | at its last check | change |",
        "|---|---|---|---|---|---|",
    ]
    for (arm, protocol), values in sorted(arms.items(), key=lambda item: (item[0][1], item[0][0])):
        quarter, end = np.mean(values, axis=0)
        rows.append(f"| {arm} | {protocol} | {len(values)} | {quarter:.4f} | {end:.4f} | {end - quarter:+.4f} |")
    return rows


def _label_curve(summaries: Summaries, arm: str) -> list[tuple[int, float, float, float]]:
    """``(labelled studies, mean, low, high)`` of test mean Dice over seeds and studies, for each fraction done."""
    points = []
    for fraction in (*FRACTIONS, 1.0):
        runs = _runs(summaries, arm if fraction == 1.0 else f"{arm}-f{fraction:g}", "finetune")
        if runs:
            values = np.array([list(_study_values(r, "mean").values()) for _, r in sorted(runs.items())])
            points.append((round(fraction * TRAINING_STUDIES), *bootstrap_mean(values)))
    return points


def _mean_dice(summaries: Summaries, arm: str) -> float:
    return float(np.mean([r["test"]["tasks"]["mean"]["dice"] for r in _runs(summaries, arm, "finetune").values()]))


def _usable(timing: Mapping[str, Any] | None, overrides: Mapping[str, Any], seed: int) -> bool:
    """A timing counts for a candidate when it ran the candidate's settings, seed and full dataset."""
    return timing is not None and dict(timing["overrides"]) == dict(overrides) and not timing["common"] \
        and timing["seed"] == seed  # fmt: skip


def default_pick(
    summaries: Summaries, timings: Timings, seeds: Sequence[int] = (0, 1, 2)
) -> tuple[str | None, list[str], str]:
    """The default the study picks: among the candidate defaults (finetune arms of all tasks and labels) whose whole
    default run took at most ``BAR_MINUTES``, the highest test mean Dice; an arm whose paired CI against it includes
    0 ties with it, and ties go to the faster run. Returns ``(pick or None, table rows, why)``.

    A timing counts only for the settings, seed and dataset it ran (``scripts/study.py time`` records them)."""
    choices = choose(summaries, seeds)
    planned = candidate_defaults(seeds, choices)
    timed = {a: timings[a]["wall_minutes"] for a, o in planned.items() if _usable(timings.get(a), o, seeds[0])}
    missing = [f"{a}-finetune-s{s}" for a in planned for s in seeds if f"{a}-finetune-s{s}" not in summaries]
    untimed = [a for a in planned if a not in timed]
    done = [a for a in planned if _runs(summaries, a, "finetune")]
    within = [a for a in done if a in timed and timed[a] <= BAR_MINUTES]
    best = max(within, key=lambda a: _mean_dice(summaries, a), default=None)
    final = choices.best_single is not None and choices.best_balancer is not None and not missing and not untimed
    rows = ["| arm | teachers, balancer | seeds | test mean Dice | minus the best, 95% CI | whole default run: min "
            "(its test mean Dice) |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    tied = []
    for arm in done:
        overrides = planned[arm]
        setting = f"{'+'.join(overrides['teachers'])}, {overrides.get('balancing', 'attention')}"
        setting = setting if overrides["teachers"] else "none (no stage 1)"
        if overrides.get("standardize"):
            setting += " + PHI-S"
        c = compare(summaries, (arm, "finetune"), (best, "finetune")) if best and arm != best else None
        if arm == best:
            against = "best" if final else "best so far"
        else:
            against = f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]" if c else "-"
        minutes = f"{timed[arm]:.2f}" if arm in timed else "other settings" if arm in timings else "not timed"
        if arm in timed and timings[arm].get("test_mean_dice") is not None:  # at the configs' epochs
            minutes += f" ({timings[arm]['test_mean_dice']:.4f})"
        if arm in within and (arm == best or (c is not None and c["low"] <= 0 <= c["high"])):
            tied.append(arm)
        rows.append(f"| {arm} | {setting} | {len(_runs(summaries, arm, 'finetune'))} | "
                    f"{_mean_dice(summaries, arm):.4f} | {against} | {minutes} |")  # fmt: skip
    if choices.best_single is None or choices.best_balancer is None:
        return None, rows, "waits for the probe choices (best single teacher, best balancer)"
    if missing or untimed:
        waits = [f"runs {', '.join(missing)}"] if missing else []
        waits += [f"the whole-run timing of {', '.join(untimed)}"] if untimed else []
        return None, rows, "waits for " + " and ".join(waits)
    if best is None:
        return None, rows, f"no candidate's whole run stays within {BAR_MINUTES:g} min"
    pick = min(tied, key=lambda a: timed[a])
    why = f"{best} has the highest test mean Dice within {BAR_MINUTES:g} min"
    if pick != best:
        why += f"; {pick} ties with it (CI includes 0) and its whole run is faster"
    return pick, rows, why


def _cpu_cost(runs: Sequence[Mapping[str, Any]]) -> str:
    """Mean CPU minutes of ``runs`` per machine and per stage 1 computed in the run or shared: only these compare."""
    groups: dict[tuple[str, bool], list[float]] = {}
    for s in runs:
        groups.setdefault((s["machine"], s["stage1_shared"]), []).append(s["cpu_minutes"])
    return ", ".join(f"{np.mean(minutes):.1f} ({len(minutes)} run{'s' if len(minutes) > 1 else ''}, {machine}, "
                     f"stage 1 {'shared' if shared else 'computed in the run'})"
                     for (machine, shared), minutes in sorted(groups.items()))  # fmt: skip


def markdown(summaries: Summaries, seeds: Sequence[int] = (0, 1, 2), timings: Timings | None = None) -> str:
    """``docs/study.md`` from the run summaries and the candidate defaults' whole-run timings."""
    choices = choose(summaries, seeds)
    planned = plan_runs(seeds, choices)
    missing = [r.name for r in planned if r.name not in summaries]
    tasks = list(dict.fromkeys(t for _, s in sorted(summaries.items()) for t in s["test"]["tasks"] if t != "mean"))
    cpu_runs = [s for s in summaries.values() if s["device"] == "cpu"]
    devices = sorted({s["device"] for s in summaries.values()})
    versions = sorted({s["versions"]["vfss_agglo_bundle"] for s in summaries.values()})
    study_budget = f"{STUDY_EPOCHS['distill_epochs']} + {STUDY_EPOCHS['seg_epochs']}"
    lines = [
        "# Study: does agglomerating teachers help (phantom v2, twice the default run's budget)",
        "",
        "Rebuilt by `python scripts/study.py report` from the run summaries in `docs/study/runs/` alone. Each run is",
        f"a full `training` run of the bundle at the study's budget ({study_budget} epochs, twice the default run's",
        f"{DISTILL_EPOCHS} + {SEG_EPOCHS}; label fractions at the same optimizer steps; the convergence arms",
        "`default-e<stage 1>-<stage 2>` at their own), 100 phantom v2 studies (80 training, 8 validation, 12 test of",
        '24 frames), seeds 0-2, one dataset (`data_seed` 0). Neither budget is converged (see "Converged?"): arms',
        "are compared near convergence, not at it.",
        "Protocols: **probe** = the distilled encoder frozen (batch norm too), only the decoder trained;",
        "**finetune** = stage 2 as the default run does it. Choices (best single teacher, best balancer, PHI-S) are",
        "made on probe validation Dice, never on test. Paired differences: same seed, same test study; 95%",
        f"percentile bootstrap over seeds and studies ({RESAMPLES} resamples). The runs of the plan before it",
        "moved to the study's budget (default run's budget, seed 0) are kept as a record in",
        "`docs/study/default_budget_runs/`.",
        "",
        f"Runs done: {len(summaries)} of {len(planned)} planned now; device(s): {', '.join(devices) or '-'}; "
        f"CPU time of the CPU runs: {sum(s['cpu_minutes'] for s in cpu_runs) / 60:.1f} h; bundle version(s): "
        f"{', '.join(versions) or '-'}. Choices so far: best single teacher {choices.best_single}, best pair "
        f"{choices.best_pair}, PHI-S helps attention: {choices.phis_helps_attention}, best balancer at four "
        f"teachers {choices.best_balancer}.",
        "",
    ]
    machines = Counter(s["machine"] for s in cpu_runs)
    if machines:
        counts = "; ".join(f"{machine}: {n}" for machine, n in sorted(machines.items()))
        unnamed = "; the first runs did not record the CPU model" if any("(" not in m for m in machines) else ""
        lines += ["Machines of the CPU runs, with their number of runs (CPU minutes compare only within one kind"
                  f"{unnamed}): {counts}.", ""]  # fmt: skip
    renamed = [f"{name} (as {s['renamed_from']})" for name, s in sorted(summaries.items()) if s.get("renamed_from")]
    if renamed:
        lines += [f"Run under an earlier name, with the same settings: {', '.join(renamed)}.", ""]
    if missing:
        hours = _cpu_hours_left(summaries, [r for r in planned if r.name not in summaries])
        lines.append(f"Still to run ({len(missing)}): " + ", ".join(missing) + ".")
        if hours is not None:
            lines[-1] += (f" About {hours:.1f} CPU hours (each run at the mean CPU minutes of the finished CPU runs "
                          "of its protocol; the probe choices add more runs).")  # fmt: skip
        lines.append("")
    for protocol in ("probe", "finetune"):
        lines += [f"## Arms, {protocol} (test, mean +- sd over seeds)", "", *_arm_table(summaries, protocol), ""]

    best_all4 = f"all4-{choices.best_balancer}" if choices.best_balancer else "all4-attention"
    pair = "pair-" + "+".join(choices.best_pair) if choices.best_pair else None
    four_against_fewer = [((best_all4, p), (choices.best_single, p)) for p in ("probe", "finetune")]
    four_against_fewer += [((best_all4, "probe"), (pair, "probe")), ((pair, "probe"), (choices.best_single, "probe"))]
    questions = [
        ("1. Does distillation beat training from scratch?",
         [(("default", "finetune"), ("scratch", "finetune")), ((best_all4, "finetune"), ("scratch", "finetune")),
          *[((t, "probe"), ("scratch", "probe")) for t in ALL_TEACHERS],
          ((best_all4, "probe"), ("scratch", "probe"))]),
        ("2. Do four teachers beat the best single teacher (the paper: about +2 points)? And the best pair?",
         four_against_fewer if choices.best_single else []),
        ("3. Does any balancer beat fixed weights, and does PHI-S help? (probe, four teachers)",
         [((f"all4-{b}", "probe"), ("all4-fixed", "probe"))
          for b in ("attention", "uncertainty", "mlp", "mlp-phis", "attention-phis", "fixed-phis")]
         + [(("all4-attention-phis", "probe"), ("all4-attention", "probe"))]),
        ("4. What does each teacher add? (probe: each alone against the others)",
         [((a, "probe"), (b, "probe")) for i, a in enumerate(ALL_TEACHERS) for b in ALL_TEACHERS[i + 1:]]),
    ]  # fmt: skip
    for title, pairs in questions:
        lines += [f"## {title}", "", *_comparison_rows([compare(summaries, a, b) for a, b in pairs]), ""]
        for a, b in pairs:
            driving = _tasks_driving(summaries, a, b, tasks) if compare(summaries, a, b) else []
            if driving:
                lines.append(f"- {_label(a)} - {_label(b)}, tasks whose difference excludes 0: {'; '.join(driving)}")
        lines.append("")

    lines += ["## 5. Specialists against the one multi-task model (finetune, on their own task)", ""]
    lines += _comparison_rows([compare(summaries, (f"{t}-specialist", "finetune"), ("default", "finetune"), t)
                               for t in SPECIALIST_TASKS])  # fmt: skip
    specialist_cpu = [s for n, s in summaries.items() if "-specialist-" in n and s["device"] == "cpu"]
    default_cpu = [s for s in _runs(summaries, "default", "finetune").values() if s["device"] == "cpu"]
    if specialist_cpu and default_cpu:
        lines += ["", f"Cost, CPU min a run (they compare only within one machine kind): specialists "
                  f"{_cpu_cost(specialist_cpu)}; the multi-task run {_cpu_cost(default_cpu)}. "
                  f"{len(SPECIALIST_TASKS)} structures need {len(SPECIALIST_TASKS)} specialists and "
                  f"{len(SPECIALIST_TASKS)} forwards a frame, 12 need one multi-task forward."]  # fmt: skip
    lines += ["", "## 6. Dice against the number of labelled training studies (finetune)", "",
              "| arm | labelled studies | test mean Dice | 95% CI |", "|---|---|---|---|"]  # fmt: skip
    for arm in ("scratch", best_all4):
        for studies, mean, low, high in _label_curve(summaries, arm):
            lines.append(f"| {arm} | {studies} | {mean:.4f} | [{low:.4f}, {high:.4f}] |")
    pick, rows, why = default_pick(summaries, timings or {}, seeds)
    lines += ["", "## 7. The default teacher set and balancer the study picks", "",
              f"Rule: among the candidate defaults (finetune, all tasks, every label), the highest test mean Dice "
              f"(at the study's budget) whose whole default run (the configs' epochs, fresh phantom, fresh teacher "
              f"store, both stages and the test report, seed {seeds[0]}, `scripts/study.py time`, nothing else "
              f"running) takes at most {BAR_MINUTES:g} min on 2 CPU cores; an arm whose paired CI against it includes "
              f"0 ties with it, and ties go to the faster run.",
              "", *rows, "", f"Pick: **{pick or 'not yet'}** ({why})."]  # fmt: skip
    lines += ["", "## Converged?", ""]
    default = _runs(summaries, DEFAULT_RUN_ARM, "finetune").get(seeds[0])
    if default is not None:
        lines += [f"The default run itself (its config, {DISTILL_EPOCHS} + {SEG_EPOCHS} epochs, seed and data) is the "
                  f"arm {DEFAULT_RUN_ARM} at seed {seeds[0]}: test mean Dice "
                  f"{default['test']['tasks']['mean']['dice']:.4f}. The study's default arm is the same at "
                  f"{study_budget} epochs.", ""]  # fmt: skip
    for arm, base, what, budget in _doublings():
        c = compare(summaries, (arm, "finetune"), (base, "finetune"))
        if c is None:
            lines.append(f"- {what}: not done yet.")
            continue
        by_task = [t for t in (compare(summaries, c["a"], c["b"], task) for task in tasks) if t is not None]
        largest = "; ".join(f"{t['task']} {t['mean']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}]"
                            for t in sorted(by_task, key=lambda t: -abs(t["mean"]))[:3])  # fmt: skip
        lines.append(f"- {what}, seed {seeds[0]}: test mean Dice {c['mean']:+.4f} (95% CI over studies "
                     f"[{c['low']:+.4f}, {c['high']:+.4f}]); the tasks whose mean it moved most: "
                     f"{largest}.")  # fmt: skip
        if budget:
            verdict = "converged" if abs(c["mean"]) < 0.01 else "**not converged**"
            lines.append(f"  By the issue's test (a change under 0.01) {budget} is {verdict}.")
    lines += ["", "Stage 2's validation mean Dice at its last check at or before 3/4 of its epochs and at its last",
              "check (the tested model is the best-validation checkpoint). The learning rate decays to 0 at the last",
              "epoch, so a rise here means an arm was still learning in its last quarter; probe differences then",
              "compare encoders at the study's budget, not at each probe's own convergence:", "",
              *_convergence_table(summaries)]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cpu_hours_left(summaries: Summaries, todo: Sequence[Run]) -> float | None:
    """CPU hours of the runs ``todo``, each at the mean CPU minutes of the finished CPU runs of its protocol at the
    study's budget (convergence arms left out); None while a protocol has no such run."""
    minutes: dict[str, list[float]] = {}
    for s in summaries.values():
        if s["device"] == "cpu" and s["group"] != "convergence":
            minutes.setdefault(s["protocol"], []).append(s["cpu_minutes"])
    if any(r.protocol not in minutes for r in todo):
        return None
    return sum(float(np.mean(minutes[r.protocol])) for r in todo) / 60


def _doublings() -> list[tuple[str, str, str, str]]:
    """``(arm, base, what, budget judged or "")``: each convergence arm against the one with half its epochs."""

    def budget(epochs: Mapping[str, int]) -> str:
        return f"{epochs['distill_epochs']} + {epochs['seg_epochs']}"

    run, study = budget(CONVERGENCE_ARMS[DEFAULT_RUN_ARM]), budget(STUDY_EPOCHS)
    rows = [("default", DEFAULT_RUN_ARM, f"Doubling both stages' epochs ({run} to {study})",
             "the default run's budget")]  # fmt: skip
    rows += [(arm, DEFAULT_RUN_ARM, f"Doubling one stage's epochs ({run} to {budget(epochs)})", "")
             for arm, epochs in CONVERGENCE_ARMS.items() if arm not in (DEFAULT_RUN_ARM, DOUBLED_ARM)]  # fmt: skip
    rows.append((DOUBLED_ARM, "default", f"Doubling both again ({study} to {budget(CONVERGENCE_ARMS[DOUBLED_ARM])})",
                 "the study's budget"))  # fmt: skip
    return rows


def _plot(summaries: Summaries, path: Path, seeds: Sequence[int] = (0, 1, 2)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choices = choose(summaries, seeds)
    best_all4 = f"all4-{choices.best_balancer}" if choices.best_balancer else "all4-attention"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    pairs = [((t, "probe"), ("scratch", "probe")) for t in (*ALL_TEACHERS, best_all4)]
    pairs += [(("default", "finetune"), ("scratch", "finetune")), ((best_all4, "finetune"), ("scratch", "finetune"))]
    found = [c for c in (compare(summaries, a, b) for a, b in pairs) if c is not None]
    y = np.arange(len(found))[::-1]
    if found:
        left.errorbar([c["mean"] for c in found], y, capsize=3, fmt="o", color="#b5483a",
                      xerr=[[c["mean"] - c["low"] for c in found], [c["high"] - c["mean"] for c in found]])  # fmt: skip
    left.axvline(0.0, color="black", lw=0.8)
    left.set_yticks(y, [f"{_label(c['a'])} - {_label(c['b'])}" for c in found], fontsize=7)
    left.set_xlabel("paired difference in test mean Dice, 95% bootstrap CI")
    for arm, colour in (("scratch", "#999999"), (best_all4, "#3a78b5")):
        curve = _label_curve(summaries, arm)
        if curve:
            x, mean, low, high = (np.array(v) for v in zip(*curve, strict=True))
            right.plot(x, mean, "o-", color=colour, label=arm)
            right.fill_between(x, low, high, color=colour, alpha=0.2)
    right.set_xscale("log", base=2)
    right.set_xlabel("labelled training studies (finetune)")
    right.set_ylabel("test mean Dice (95% CI)")
    if right.lines:
        right.legend()
    else:
        right.text(0.5, 0.5, "no label-efficiency runs yet", ha="center", va="center", transform=right.transAxes)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png", overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)


TIMING_FIELDS = {"wall_minutes": (int, float), "overrides": dict, "common": dict, "seed": int}


def load_timings(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The candidate defaults' whole-run timings (``scripts/study.py time``); empty when none was timed yet."""
    if not Path(path).is_file():
        return {}
    found = read_json(path)
    if not isinstance(found, dict):
        raise DataFormatError(f"{path} is not an object of arm -> timing; re-time with `scripts/study.py time`.")
    for arm, entry in found.items():
        wrong = [
            k for k, kind in TIMING_FIELDS.items() if not isinstance(entry, dict) or not isinstance(entry.get(k), kind)
        ]
        if wrong:
            raise DataFormatError(f"{path}: the timing of {arm!r} lacks or mistypes {', '.join(wrong)}; re-time it "
                                  f"with `python scripts/study.py time --arm {arm}`.")  # fmt: skip
    return found


def write_report(
    summaries: str | os.PathLike = "docs/study/runs",
    out: str | os.PathLike = "docs/study.md",
    timings: str | os.PathLike = "docs/study/default_runs.json",
) -> str:
    """Write ``out`` and its figure (``.png`` beside it) from the summaries and timings; returns the Markdown path."""
    found = load_summaries(summaries)
    out = Path(out)
    write_text(out, markdown(found, timings=load_timings(timings)), overwrite=True)
    _plot(found, out.with_suffix(".png"))
    return str(out)
