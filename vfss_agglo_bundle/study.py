"""The paper's experiment: does distilling several teachers into one student beat distilling one, and which loss
balancer helps? Every arm is a real `training` run, repeated over seeds, with one shared dataset and teacher store.

Arms (for the two teachers ``a`` and ``b``, by default ``litemedsam`` and ``hog``):

- ``scratch``: no teacher; ``a``, ``b``: one teacher each; ``a+b``: both, with the default balancer (attention);
  any further teacher set the caller names (e.g. the paper's ``medsam+rad_dino+medclip`` with ``--teacher_dir``);
- balancers on ``a+b``: ``a+b fixed``, ``a+b uncertainty``, ``a+b mlp`` (``a+b`` itself is attention), then the best
  of the four by validation mean Dice again with PHI-S target standardisation;
- specialists: one single-task model each for some tasks (bolus, hyoid, c4) at the same per-model budget; they reuse
  the ``a+b`` arm's stage 1 of the same seed (the distilled encoder does not depend on the tasks), so their cost is
  that stage once plus one stage 2 per task.

Each run lives in ``<out_dir>/runs/<arm>/seed<k>/`` and is resumable: a finished run leaves ``study_run.json``
(its test and validation reports, CPU time) and is not run again; an interrupted one resumes stage by stage.
The summary compares arms on test Dice: mean +- sd over seeds, and paired differences (same seed, same test study)
with 95% bootstrap confidence intervals that resample the test studies and the seeds.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from vfss_agglo_bundle.utils.io import read_json, write_json, write_text

__all__ = [
    "BUDGETS",
    "Arm",
    "bootstrap_difference",
    "override_words",
    "plan_arms",
    "run_logged",
    "run_study",
    "summarise",
]

logger = logging.getLogger(__name__)

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
BUDGETS: dict[str, dict[str, Any]] = {
    "full": {},  # the default run's epochs (16 distillation, 20 segmentation)
    "half": {"distill_epochs": 8, "seg_epochs": 10},
    "quick": {"distill_epochs": 2, "seg_epochs": 4, "val_interval": 2},
}
DEFAULT_BUDGET = "the default run's 16 distillation and 20 segmentation epochs"
BALANCER_ABLATION: tuple[str, ...] = ("fixed", "uncertainty", "mlp", "attention")
SPECIALIST_TASKS: tuple[str, ...] = ("bolus", "hyoid", "c4")


@dataclass(frozen=True)
class Arm:
    """One configuration of the study: its name, group and the config overrides that define it."""

    name: str
    group: str  # "teachers", "balancers", "specialists"
    overrides: dict[str, Any] = field(default_factory=dict)
    stage1_from: str | None = None  # arm whose stage 1 of the same seed this one reuses (specialists)


def plan_arms(
    teachers: Sequence[str] = ("litemedsam", "hog"),
    extra_sets: Mapping[str, Sequence[str]] | None = None,
    specialist_tasks: Sequence[str] = SPECIALIST_TASKS,
) -> list[Arm]:
    """The arms before the PHI-S arm (which depends on which balancer wins, see :func:`phi_s_arm`)."""
    if len(teachers) != 2:
        raise ValueError(f"the study compares two teachers and their combination; got {list(teachers)}.")
    a, b = teachers
    both = f"{a}+{b}"
    arms = [Arm("scratch", "teachers", {"teachers": []})]
    arms += [Arm(t, "teachers", {"teachers": [t]}) for t in teachers]
    arms.append(Arm(both, "teachers", {"teachers": [a, b], "balancing": "attention"}))
    for name, members in (extra_sets or {}).items():
        arms.append(Arm(name, "teachers", {"teachers": list(members)}))
    arms += [
        Arm(f"{both} {balancer}", "balancers", {"teachers": [a, b], "balancing": balancer})
        for balancer in BALANCER_ABLATION
        if balancer != "attention"
    ]
    arms += [
        Arm(f"{task} specialist", "specialists", {"teachers": [a, b], "tasks": [task]}, stage1_from=both)
        for task in specialist_tasks
    ]
    return arms


def balancer_arms(arms: Sequence[Arm]) -> dict[str, str]:
    """Balancer -> the arm that trains the two-teacher set with it (attention: the two-teacher arm itself)."""
    two = next(arm for arm in arms if arm.group == "teachers" and len(arm.overrides.get("teachers", [])) == 2)
    found = {"attention": two.name}
    found.update(
        {
            arm.overrides["balancing"]: arm.name
            for arm in arms
            if arm.group == "balancers" and arm.overrides.get("standardize", "none") == "none"
        }
    )
    return found


def phi_s_arm(arms: Sequence[Arm], best_balancer: str) -> Arm:
    """The two-teacher set with the best balancer and PHI-S standardised targets."""
    source = next(arm for arm in arms if arm.name == balancer_arms(arms)[best_balancer])
    return Arm(f"{source.name.split(' ')[0]} {best_balancer} + PHI-S", "balancers",
               {**source.overrides, "balancing": best_balancer, "standardize": "phi_s"})  # fmt: skip


def override_words(values: Mapping[str, Any]) -> list[str]:
    """Config overrides as `monai.bundle run` command-line words (``--key value``; lists and dicts as literals)."""
    words = []
    for key, value in values.items():
        words += [f"--{key}", repr(value) if isinstance(value, (list, dict)) else str(value)]
    return words


def run_logged(cmd: Sequence[str], log: Path, threads: int) -> float:
    """Run ``cmd`` from the bundle root with its output in ``log``; returns its CPU seconds (user + system)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "GOMP_SPINCOUNT": "10000"}
    with open(log, "a") as out:
        process = subprocess.Popen(list(cmd), cwd=BUNDLE_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {process.returncode}); see {log}.")
    return usage.ru_utime + usage.ru_stime


def run_arm(arm: Arm, seed: int, out_dir: Path, common: Sequence[str], threads: int = 2) -> dict:
    """One `training` run of ``arm`` with training seed ``seed``, and its model's validation report."""
    root = out_dir / "runs" / arm.name.replace(" ", "_") / f"seed{seed}"
    done = root / "study_run.json"
    if done.exists():
        return read_json(done)
    root.mkdir(parents=True, exist_ok=True)
    if arm.stage1_from is not None:  # the specialist reuses the two-teacher run's distilled encoder
        source = out_dir / "runs" / arm.stage1_from.replace(" ", "_") / f"seed{seed}" / "models"
        (root / "models").mkdir(exist_ok=True)
        for name in ("student_encoder.pt", "distillation.done.json"):
            if not (root / "models" / name).exists():
                shutil.copy2(source / name, root / "models" / name)
    started = time.time()
    base = [sys.executable, "-m", "monai.bundle", "run"]
    args = ["--bundle_root", str(root), *common, "--seed", str(seed), *override_words(arm.overrides)]
    cpu = run_logged([*base, "training", "--config_file", "configs/train.yaml", *args], root / "training.log", threads)
    evaluation = ["--eval_split", "validation", "--output_dir", str(root / "eval/validation")]
    cpu += run_logged([*base, "evaluating", "--config_file", "configs/evaluate.yaml", *_evaluate_args(args),
                       *evaluation], root / "evaluating.log", threads)  # fmt: skip
    result = {
        "arm": arm.name,
        "group": arm.group,
        "seed": seed,
        "overrides": arm.overrides,
        "cpu_seconds": cpu,
        "wall_seconds": time.time() - started,
        "test": read_json(root / "eval/report.json"),
        "validation": read_json(root / "eval/validation/report.json"),
    }
    write_json(done, result)
    return result


def _evaluate_args(args: Sequence[str]) -> list[str]:
    """The training overrides that the evaluate config knows (no teacher, balancer or epoch settings)."""
    keep = {"--bundle_root", "--dataset_dir", "--image_size", "--tasks", "--student", "--decoder_width", "--seed",
            "--device"}  # fmt: skip
    out, i = [], 0
    while i < len(args):
        if args[i] in keep:
            out += args[i : i + 2]
        i += 2
    return out


def _segmenter_gflops(num_classes: int, overrides: Sequence[str]) -> float:
    """FLOPs of one frame through the segmenter with ``num_classes`` outputs (the study's image size)."""
    import torch
    from vfss_agglo_bundle.benchmark.measure import count_flops
    from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter

    words = list(overrides)
    size = int(words[words.index("--image_size") + 1]) if "--image_size" in words else 256
    model = VFSSSegmenter(num_classes=num_classes).eval()
    with torch.no_grad():
        return count_flops(lambda: model(torch.zeros(1, 1, size, size))) / 1e9


def _mean_dice(report: dict) -> float:
    return next(r["dice"] for r in report["rows"] if r["task"] == "mean")


def _study_dice(report: dict, task: str = "mean") -> dict[str, float]:
    return {study: values[task]["dice"] for study, values in report["studies"].items()}


def bootstrap_difference(differences: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile bootstrap interval of a ``[seeds, studies]`` array of paired differences, resampling
    seeds and test studies (both with replacement)."""
    differences = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    n_seeds, n_studies = differences.shape
    rows = rng.integers(0, n_seeds, (resamples, n_seeds))
    cols = rng.integers(0, n_studies, (resamples, n_studies))
    means = np.array([differences[np.ix_(r, c)].mean() for r, c in zip(rows, cols, strict=True)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(differences.mean()), float(low), float(high)


def _paired(results: Mapping[str, list[dict]], a: str, b: str, task: str = "mean") -> np.ndarray:
    """``[seeds, studies]`` test Dice of arm ``a`` minus arm ``b`` (same seed, same study)."""
    by_seed_a = {r["seed"]: _study_dice(r["test"], task) for r in results[a]}
    by_seed_b = {r["seed"]: _study_dice(r["test"], task) for r in results[b]}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    studies = sorted(by_seed_a[seeds[0]])
    return np.array([[by_seed_a[s][st] - by_seed_b[s][st] for st in studies] for s in seeds])


def summarise(results: Mapping[str, list[dict]], arms: Sequence[Arm], tasks: Sequence[str]) -> dict:
    """Per-arm mean +- sd over seeds (overall and per task) and the paired comparisons with bootstrap intervals."""
    table = {}
    for arm in arms:
        runs = results.get(arm.name, [])
        if not runs:
            continue
        overall = [_mean_dice(r["test"]) for r in runs]
        row = {"group": arm.group, "seeds": len(runs), "mean": float(np.mean(overall)), "sd": float(np.std(overall))}
        row["validation"] = float(np.mean([_mean_dice(r["validation"]) for r in runs]))
        row["cpu_minutes"] = float(np.mean([r["cpu_seconds"] for r in runs]) / 60)
        for task in arm.overrides.get("tasks", tasks):
            values = [next(x["dice"] for x in r["test"]["rows"] if x["task"] == task) for r in runs]
            row[task] = (float(np.mean(values)), float(np.std(values)))
        for key in ("dice_present", "fp_rate"):
            means = [next(x[key] for x in r["test"]["rows"] if x["task"] == "mean") for r in runs]
            row[key] = (
                float(np.mean([m for m in means if m is not None])) if any(m is not None for m in means) else None
            )
        table[arm.name] = row
    comparisons = []

    def compare(a: str, b: str, kind: str, task: str = "mean") -> None:
        if a in table and b in table:
            mean, low, high = bootstrap_difference(_paired(results, a, b, task))
            comparisons.append({"kind": kind, "a": a, "b": b, "task": task, "mean": mean, "low": low, "high": high})

    teacher_arms = [a for a in arms if a.group == "teachers" and a.name != "scratch"]
    for arm in teacher_arms:
        compare(arm.name, "scratch", "distilled - scratch")
    singles = [a.name for a in teacher_arms if len(a.overrides["teachers"]) == 1 and a.name in table]
    multi = [a.name for a in teacher_arms if len(a.overrides["teachers"]) > 1]
    if singles and multi:
        best_single = max(singles, key=lambda name: table[name]["validation"])  # chosen on validation, not test
        for name in multi:
            compare(name, best_single, "multi - best single (by validation)")
    by_balancer = balancer_arms(arms)
    fixed = by_balancer.get("fixed")
    for balancer, name in by_balancer.items():
        if balancer != "fixed" and fixed is not None:
            compare(name, fixed, "balancer - fixed")
    for arm in arms:
        if arm.overrides.get("standardize") == "phi_s":
            compare(arm.name, by_balancer[arm.overrides["balancing"]], "PHI-S - same balancer without")
            if fixed is not None:
                compare(arm.name, fixed, "balancer - fixed")
    for arm in arms:
        if arm.group == "specialists":
            task = arm.overrides["tasks"][0]
            compare(arm.name, arm.stage1_from, f"specialist - multi-task model on {task}", task=task)
    return {"table": table, "comparisons": comparisons}


def _write_plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = {k: v for k, v in summary["table"].items() if v["group"] != "specialists"}
    comparisons = summary["comparisons"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    names = list(table)
    left.bar(range(len(names)), [table[n]["mean"] for n in names], yerr=[table[n]["sd"] for n in names], capsize=4,
             color=["#999999" if n == "scratch" else "#3a78b5" for n in names])  # fmt: skip
    left.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    low = min(table[n]["mean"] - table[n]["sd"] for n in names)
    left.set_ylim(max(0.0, low - 0.05), min(1.0, max(table[n]["mean"] + table[n]["sd"] for n in names) + 0.02))
    left.set_ylabel("test mean Dice (mean +- sd over seeds)")
    left.grid(axis="y", alpha=0.3)
    labels = [f"{c['a']} - {c['b']}" + (f" ({c['task']})" if c["task"] != "mean" else "") for c in comparisons]
    y = np.arange(len(comparisons))[::-1]
    means = np.array([c["mean"] for c in comparisons])
    errors = np.array([[c["mean"] - c["low"] for c in comparisons], [c["high"] - c["mean"] for c in comparisons]])
    right.errorbar(means, y, xerr=errors, fmt="o", capsize=3, color="#b5483a")
    right.axvline(0.0, color="black", lw=0.8)
    right.set_yticks(y, labels, fontsize=7)
    right.set_xlabel("paired difference in test Dice, 95% bootstrap CI (studies x seeds)")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    from vfss_agglo_bundle.utils.io import atomic_path

    with atomic_path(path, suffix=".png", keep_old=True) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def markdown(summary: dict, tasks: Sequence[str], settings: dict) -> str:
    """The study report: settings, the per-arm table, the comparisons."""
    table, lines = summary["table"], []
    lines += [
        "# Study: multi-teacher vs single-teacher distillation, and loss balancers",
        "",
        f"Command: `{settings['command']}`",
        "",
        f"Budget `{settings['budget']}` ({settings['budget_overrides'] or DEFAULT_BUDGET}); seeds {settings['seeds']}; "
        f"data seed {settings['data_seed']} (one phantom dataset for every run); device {settings['device']}. "
        f"{settings['runs']} runs, CPU time {settings['cpu_hours']:.1f} h in all ({settings['wall_hours']:.1f} h wall "
        f"in the last invocation, {settings['jobs']} runs at a time; a resumed study counts only that); "
        f"{settings['machine']}.",
        "",
        "## Test mean Dice per arm (mean +- sd over seeds)",
        "",
        "| arm | seeds | test mean Dice | Dice (present) | FP rate (absent) | validation mean Dice | CPU min / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        present = "-" if row["dice_present"] is None else f"{row['dice_present']:.4f}"
        fp = "-" if row["fp_rate"] is None else f"{row['fp_rate']:.3f}"
        lines.append(f"| {name} | {row['seeds']} | {row['mean']:.4f} +- {row['sd']:.4f} | {present} | {fp} | "
                     f"{row['validation']:.4f} | {row['cpu_minutes']:.1f} |")  # fmt: skip
    full = [n for n, r in table.items() if r["group"] != "specialists"]
    lines += ["", "## Per task (test Dice, mean +- sd over seeds)", "", "| task | " + " | ".join(full) + " |"]
    lines.append("|---" * (len(full) + 1) + "|")
    for task in tasks:
        cells = [f"{table[n][task][0]:.3f} +- {table[n][task][1]:.3f}" for n in full]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired differences (same seed, same test study), 95% bootstrap CI over studies and seeds", "",
              "| comparison | task | difference | 95% CI | CI excludes 0 |", "|---|---|---|---|---|"]  # fmt: skip
    for c in summary["comparisons"]:
        excludes = "yes" if c["low"] > 0 or c["high"] < 0 else "no"
        lines.append(f"| {c['a']} - {c['b']} ({c['kind']}) | {c['task']} | {c['mean']:+.4f} | "
                     f"[{c['low']:+.4f}, {c['high']:+.4f}] | {excludes} |")  # fmt: skip
    cost = settings.get("specialist_cost")
    if cost:
        n, each, multi = cost["models"], cost["specialist_gflops"], cost["multi_gflops"]
        lines += [
            "",
            "## Specialists: cost",
            "",
            f"{n} single-task models: {cost['stage2_cpu_minutes']:.1f} CPU minutes of stage 2 per seed in all (the "
            f"distilled encoder is shared: one stage 1), against {cost['multi_stage2_cpu_minutes']:.1f} for the "
            f"multi-task model's stage 2; at inference {n} forwards of {each:.2f} GFLOPs a frame ({n * each:.2f} in "
            f"all) for {n} structures, against one forward of {multi:.2f} GFLOPs for all {len(tasks)} structures.",
        ]
    lines += ["", "## What the numbers support", ""]
    for kind in dict.fromkeys(c["kind"] for c in summary["comparisons"]):
        for c in (c for c in summary["comparisons"] if c["kind"] == kind):
            if c["low"] > 0:
                verdict = "better: the 95% CI excludes 0"
            elif c["high"] < 0:
                verdict = "worse: the 95% CI excludes 0"
            else:
                verdict = "no difference shown (the 95% CI includes 0)"
            lines.append(f"- {c['a']} vs {c['b']} ({c['task']}): {c['mean']:+.4f} Dice, {verdict}.")
    return "\n".join(lines) + "\n"


def run_study(
    out_dir: str | os.PathLike = "eval/study",
    seeds: Sequence[int] = (0, 1, 2),
    budget: str = "full",
    teachers: Sequence[str] = ("litemedsam", "hog"),
    extra_sets: Mapping[str, Sequence[str]] | None = None,
    specialist_tasks: Sequence[str] = SPECIALIST_TASKS,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    device: str | None = None,
) -> dict:
    """Run (or resume) every arm over ``seeds``; write ``study.json``, ``study.md`` and ``study.png`` to
    ``out_dir``. Returns the summary.

    Args:
        out_dir: the study folder (runs, shared data and teacher store, the report).
        seeds: training seeds (the phantom is the same for all: ``data_seed`` 0).
        budget: ``full`` (the default run's epochs), ``half`` or ``quick``.
        teachers: the two teachers; extra_sets: further named teacher sets.
        specialist_tasks: tasks that get a single-task model.
        overrides: command-line words added to every run (``["--image_size", "512"]``).
        jobs: runs at a time; the two CPU cores are split between them (torch threads = cores / jobs).
        device: ``cuda:0`` etc.; default: CUDA with AMP when it is available, else the CPU.
    """
    import torch

    out_dir = Path(out_dir).resolve()
    budget_overrides = BUDGETS[budget]
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    common = ["--dataset_dir", str(out_dir / "data"), "--cache_dir", str(out_dir / "cache"), "--data_seed", "0",
              "--device", device, *(["--amp", "True"] if device.startswith("cuda") else []),
              *override_words(budget_overrides), *overrides]  # fmt: skip
    threads = max(1, (os.cpu_count() or 2) // max(1, jobs))
    arms = plan_arms(teachers, extra_sets, specialist_tasks)
    started = time.time()
    results: dict[str, list[dict]] = {}

    def phase(selected: Sequence[Arm]) -> None:
        work = [(arm, seed) for arm in selected for seed in seeds]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for (arm, _), result in zip(work, pool.map(lambda w: run_arm(*w, out_dir, common, threads), work),
                                        strict=True):  # fmt: skip
                results.setdefault(arm.name, []).append(result)
                logger.info("study: %s seed %d: test mean Dice %.4f", arm.name, result["seed"],
                            _mean_dice(result["test"]))  # fmt: skip

    # the first run alone writes the dataset and fills the shared teacher store; the rest reuse them
    first = next(arm for arm in arms if len(arm.overrides.get("teachers", [])) == 2)
    run_arm(first, seeds[0], out_dir, common, (os.cpu_count() or 2))
    phase([a for a in arms if a.group in ("teachers", "balancers")])
    validation = {b: np.mean([_mean_dice(r["validation"]) for r in results[name]])
                  for b, name in balancer_arms(arms).items()}  # fmt: skip
    best = max(validation, key=validation.get)
    phi = phi_s_arm(arms, best)
    arms.insert(max(i for i, a in enumerate(arms) if a.group == "balancers") + 1, phi)
    phase([phi, *[a for a in arms if a.group == "specialists"]])

    tasks = read_json(out_dir / "data/datalist.json")["tasks"]
    summary = summarise(results, arms, tasks)
    specialists = [a for a in arms if a.group == "specialists" and a.name in results]
    specialist_cost = None
    if specialists:
        multi = results[specialists[0].stage1_from]
        specialist_cost = {
            "models": len(specialists),
            "stage2_cpu_minutes": sum(np.mean([r["cpu_seconds"] for r in results[a.name]]) for a in specialists) / 60,
            "multi_stage2_cpu_minutes": float(np.mean([r["cpu_seconds"] for r in multi])) / 60,
            "specialist_gflops": _segmenter_gflops(1, overrides),
            "multi_gflops": _segmenter_gflops(len(tasks), overrides),
        }
    runs = [r for rs in results.values() for r in rs]
    settings = {
        "command": " ".join(["python scripts/study.py", *sys.argv[1:]]) if sys.argv[0].endswith("study.py")
        else f"run_study(seeds={list(seeds)}, budget={budget!r})",
        "budget": budget,
        "budget_overrides": ", ".join(f"{k} {v}" for k, v in budget_overrides.items()),
        "seeds": list(seeds),
        "data_seed": 0,
        "device": device,
        "runs": len(runs),
        "cpu_hours": sum(r["cpu_seconds"] for r in runs) / 3600,
        "wall_hours": (time.time() - started) / 3600,
        "jobs": jobs,
        "machine": f"{os.cpu_count()} CPU cores",
        "best_balancer_by_validation": best,
        "specialist_cost": specialist_cost,
        "overrides": list(overrides),
    }  # fmt: skip
    write_json(out_dir / "study.json", {"settings": settings, **summary, "runs": results}, keep_old=True)
    write_text(out_dir / "study.md", markdown(summary, tasks, settings), keep_old=True)
    _write_plot(summary, out_dir / "study.png")
    return {"settings": settings, **summary}
