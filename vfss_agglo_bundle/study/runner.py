"""Running the study's runs: one `training` run each (plus a validation evaluation), skipped when its summary exists
for the same fingerprint, and a small summary per finished run written to ``docs/study/runs/<run>.json``.

Runs live in ``<work_dir>/runs/<run>/`` (not committed); every run shares ``<work_dir>/data`` (one phantom dataset,
``data_seed`` 0) and ``<work_dir>/cache`` (one teacher store). A run whose stage 1 another finished run already
computed (same teachers, balancer, standardisation, epochs and seed) starts from a copy of it, so it costs stage 2
only. A run's CPU time is kept in ``<run>/cpu_seconds.json`` while it runs (every 30 s), so a run stopped from outside
and resumed later reports the CPU time of all its attempts (less at most 30 s of each stopped one).

Several runners may share one ``work_dir`` (:func:`run_study_workers`, or runners started by hand): each claims the
run it works on (``<work_dir>/claims/<run>.lock``, an OS lock that dies with its holder) and takes the next run no
other runner holds; a run whose stage 1 another runner is computing waits for it instead of computing it twice. On 2
cores, two runners of 1 thread each did 1.3x the stage-2 iterations of one runner of 2 threads (the probe's stage 2
spends about a quarter of its time augmenting frames, in one thread), but 0.92x the epochs of a four-teacher stage 1
(its adaptor heads' matrix products use both threads well).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vfss_agglo_bundle.study.plan import STUDY_BASE, Run, choose, plan_runs, run_fingerprint
from vfss_agglo_bundle.utils.io import read_json, write_json
from vfss_agglo_bundle.workflow.lock import BundleInUseError, lock_bundle, release_bundle

__all__ = [
    "BUNDLE_ROOT",
    "load_summaries",
    "machine_description",
    "override_words",
    "package_versions",
    "run_logged",
    "run_one",
    "run_study",
    "run_study_workers",
    "summary_of",
]

logger = logging.getLogger(__name__)

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
STAGE1_FILES = ("student_encoder.pt", "distillation.done.json")
MARKER = "study_run.json"
CLAIMS = "claims"  # <work_dir>/claims/<run>.lock: held by the runner working on that run
CPU_FILE = "cpu_seconds.json"  # CPU seconds a run has used so far, over all its attempts (a stopped run resumes)
DIGITS = 6
EPOCH_METRIC = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: (\S+)")  # StatsHandler's line, stage 2


def override_words(values: Mapping[str, Any]) -> list[str]:
    """Config overrides as `monai.bundle run` command-line words (``--key value``; lists and dicts as literals)."""
    words = []
    for key, value in values.items():
        words += [f"--{key}", repr(value) if isinstance(value, (list, dict)) else str(value)]
    return words


def _cpu_so_far(pid: int) -> float | None:
    """CPU seconds (user + system, with its waited-for children) a running process has used; None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


def run_logged(
    cmd: Sequence[str], log: Path, threads: int, on_cpu: Callable[[float], None] | None = None, every: float = 30.0
) -> float:
    """Run ``cmd`` from the bundle root with its output in ``log``; returns its CPU seconds (user + system).

    ``on_cpu`` is called with the CPU seconds so far every ``every`` seconds while it runs, so that a run stopped
    from outside (the session's end) leaves its CPU time behind."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "GOMP_SPINCOUNT": "10000"}
    with open(log, "a") as out:
        process = subprocess.Popen(list(cmd), cwd=BUNDLE_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        reported = time.monotonic()
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if on_cpu is not None and time.monotonic() - reported >= every:
                    seconds = _cpu_so_far(process.pid)
                    if seconds is not None:
                        on_cpu(seconds)
                    reported = time.monotonic()
                time.sleep(0.5)
        except BaseException:  # interrupted or told to stop: the run stops with it (it resumes next time)
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {process.returncode}); see {log}.")
    return usage.ru_utime + usage.ru_stime


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def summary_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """The small part of an ``eval/report.json`` the study keeps: per task (and ``mean``) Dice, Dice over present
    frames and false-positive rate; per test study each task's Dice and their mean."""
    rows = {row["task"]: {k: _round(row[k]) for k in ("dice", "dice_present", "fp_rate")} for row in report["rows"]}
    studies = {
        study: {task: _round(values["dice"]) for task, values in tasks.items()}
        for study, tasks in sorted(report["studies"].items())
    }
    return {"frames": report["num_frames"], "tasks": rows, "studies": studies}


def validation_curve(log: str | os.PathLike) -> dict[str, float]:
    """Stage 2's validation mean Dice by epoch (``{"2": 0.25, "4": 0.57, ...}``, 4 decimals) from a run's training log;
    where a stopped run repeated an epoch, its later attempt's value."""
    found = {int(epoch): float(dice) for epoch, dice in EPOCH_METRIC.findall(Path(log).read_text(errors="replace"))}
    return {str(epoch): found[epoch] for epoch in sorted(found)}


def _find_stage1(work_dir: Path, key: str, seed: int) -> Path | None:
    """The models folder of a run that finished the stage 1 of ``key`` and ``seed``."""
    for marker in sorted((work_dir / "runs").glob(f"*/{MARKER}")):
        try:
            found = read_json(marker)
        except FileNotFoundError:  # its folder was just set aside by another runner
            continue
        models = marker.parent / "models"
        if found["stage1_key"] == key and found["seed"] == seed and all((models / f).is_file() for f in STAGE1_FILES):
            return models
    return None


def _earlier_cpu(root: Path, fingerprint: str) -> float:
    """CPU seconds of earlier, stopped attempts of this run in ``root``. A folder left by an attempt with other
    settings (its stages would refuse to resume) is moved whole to ``<work_dir>/set_aside/<run>.<time>[-n]``; one
    that a live run holds raises ``BundleInUseError``, naming it."""
    ledger = root / CPU_FILE
    found = read_json(ledger) if ledger.is_file() else {}
    if found.get("fingerprint") == fingerprint:
        return float(found["seconds"])
    if found:
        lock_bundle(root, "study: setting aside")
        release_bundle(root)
        stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
        aside = root.parents[1] / "set_aside" / f"{root.name}.{stamp}"
        while aside.exists():
            n += 1
            aside = aside.with_name(f"{root.name}.{stamp}-{n}")
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(root, aside)
        logger.info("study: %s held an attempt with other settings; moved to %s", root, aside)
    return 0.0


def package_versions() -> dict[str, str]:
    import monai
    import torch
    import vfss_agglo_bundle

    return {"vfss_agglo_bundle": vfss_agglo_bundle.__version__, "torch": torch.__version__, "monai": monai.__version__}


def machine_description(threads: int) -> str:
    """CPU model, torch's CPU kernels (``AVX2``, ``AVX512``, ...), cores and threads: CPU minutes compare only
    between runs on the same kind of machine."""
    import torch
    from vfss_agglo_bundle.benchmark.machine import cpu_model

    return (f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), {platform.machine()}, "
            f"{os.cpu_count()} cores, {threads} thread{'s' if threads != 1 else ''}")  # fmt: skip


def _evaluate_words(words: Sequence[str]) -> list[str]:
    """The training overrides the evaluate config knows (no teacher, balancer or epoch settings)."""
    keep = {"--bundle_root", "--dataset_dir", "--image_size", "--tasks", "--student", "--decoder_width", "--seed",
            "--device"}  # fmt: skip
    return [w for i in range(0, len(words), 2) if words[i] in keep for w in words[i : i + 2]]


def run_one(
    run: Run,
    work_dir: str | os.PathLike,
    summaries: str | os.PathLike,
    common: Mapping[str, Any],
    device: str = "cpu",
    threads: int = 2,
) -> dict[str, Any]:
    """Run ``run`` unless ``<summaries>/<run.name>.json`` exists with the same fingerprint; returns the summary.

    Args:
        run: the run.
        work_dir: where the runs, the shared dataset and the teacher store live.
        summaries: the folder of the committed summaries (``docs/study/runs``).
        common: overrides given to every run, over the run's own (part of every fingerprint; empty for the study,
            a tiny dataset and budget in tests).
        device: ``cpu`` or ``cuda:<k>`` (AMP on CUDA); its type is part of the fingerprint.
        threads: torch threads of the run.
    """
    work_dir, summaries = Path(work_dir).resolve(), Path(summaries)
    device_type = device.split(":")[0]
    fingerprint = run_fingerprint(run, common, device_type)
    path = summaries / f"{run.name}.json"
    if path.is_file():
        found = read_json(path)
        if found.get("fingerprint") == fingerprint:
            return found
        logger.info("study: %s has a summary of other settings; running it again", run.name)
    root = work_dir / "runs" / run.name
    cpu = _earlier_cpu(root, fingerprint)
    (root / "models").mkdir(parents=True, exist_ok=True)
    ledger = root / CPU_FILE
    write_json(ledger, {"fingerprint": fingerprint, "seconds": round(cpu, 1)}, overwrite=True)  # before any output
    source = _find_stage1(work_dir, run.stage1_key, run.seed) if run.stage1_key else None
    if source is not None and source != root / "models":
        for name in STAGE1_FILES:
            shutil.copy2(source / name, root / "models" / name)
    write_json(root / MARKER, {"stage1_key": run.stage1_key, "seed": run.seed}, overwrite=True)
    words = ["--bundle_root", str(root), "--dataset_dir", str(work_dir / "data"), "--cache_dir",
             str(work_dir / "cache"), "--device", device, *(["--amp", "True"] if device_type == "cuda" else []),
             "--seed", str(run.seed), *override_words({**STUDY_BASE, **run.config_overrides(), **common})]  # fmt: skip
    base = [sys.executable, "-m", "monai.bundle", "run"]
    started = time.time()
    stage1 = "none" if not run.stage1_key else "shared" if source is not None else "computed here"
    logger.info("study: %s (stage 1: %s)", run.name, stage1)

    def record(seconds: float) -> None:
        write_json(ledger, {"fingerprint": fingerprint, "seconds": round(cpu + seconds, 1)}, overwrite=True)

    training = [*base, "training", "--config_file", "configs/train.yaml", *words]
    cpu += run_logged(training, root / "training.log", threads, on_cpu=record)
    record(0.0)
    evaluation = ["--eval_split", "validation", "--output_dir", str(root / "eval/validation")]
    cpu += run_logged([*base, "evaluating", "--config_file", "configs/evaluate.yaml", *_evaluate_words(words),
                       *evaluation], root / "evaluating.log", threads, on_cpu=record)  # fmt: skip
    record(0.0)
    validation = read_json(root / "eval/validation/report.json")
    summary = {
        "run": run.name,
        "arm": run.arm,
        "protocol": run.protocol,
        "seed": run.seed,
        "group": run.group,
        "overrides": run.config_overrides(),
        "common": dict(common),
        "fingerprint": fingerprint,
        "device": device_type,
        "stage1_shared": source is not None,
        "cpu_minutes": round(cpu / 60, 2),
        "wall_minutes": round((time.time() - started) / 60, 2),
        "machine": machine_description(threads),
        "versions": package_versions(),
        "validation_mean_dice": _round(next(r["dice"] for r in validation["rows"] if r["task"] == "mean")),
        "validation_curve": validation_curve(root / "training.log"),
        "test": summary_of(read_json(root / "eval/report.json")),
    }
    write_json(path, summary, keep_old=True)  # a summary of other settings is kept beside, under its date
    logger.info("study: %s test mean Dice %.4f, %.1f CPU min", run.name, summary["test"]["tasks"]["mean"]["dice"],
                summary["cpu_minutes"])  # fmt: skip
    return summary


def load_summaries(summaries: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Run name -> summary of every ``<run>.json`` in ``summaries`` (older copies kept beside them are skipped)."""
    found = {}
    for path in sorted(Path(summaries).glob("*.json")):
        summary = read_json(path)
        if isinstance(summary, dict) and summary.get("run") == path.stem:
            found[path.stem] = summary
    return found


def _claim(work_dir: Path, name: str) -> bool:
    """Take this process's claim on run ``name``; False when another runner holds it."""
    try:
        lock_bundle(work_dir / CLAIMS, f"study runner: {name}", lock_file=f"{name}.lock")
    except BundleInUseError:
        return False
    return True


def _release(work_dir: Path, name: str) -> None:
    release_bundle(work_dir / CLAIMS, lock_file=f"{name}.lock")


def _stage1_elsewhere(work_dir: Path, run: Run, runs: Sequence[Run]) -> str | None:
    """The planned run sharing ``run``'s stage 1 (same key and seed) that another runner holds while that stage 1 is
    not finished anywhere, i.e. is being computed; None if none."""
    if not run.stage1_key or _find_stage1(work_dir, run.stage1_key, run.seed) is not None:
        return None
    for other in runs:
        if other.stage1_key == run.stage1_key and other.seed == run.seed and other.name != run.name:
            if not _claim(work_dir, other.name):
                return other.name
            _release(work_dir, other.name)  # nobody holds it (this process holds only the run it works on)
    return None


def run_study(
    work_dir: str | os.PathLike = "eval/study",
    summaries: str | os.PathLike = "docs/study/runs",
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    threads: int = 2,
    common: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    max_runs: int | None = None,
    poll: float = 30.0,
) -> list[str]:
    """Run every planned run that has no summary for its fingerprint, re-planning after each one (the probe results
    decide the later runs); returns the names of the runs done now.

    ``only``: run names (or arm-protocol prefixes) to restrict to; ``max_runs``: stop after that many runs. Runs that
    other runners hold are left to them, and a run whose stage 1 another runner is computing waits for it; while
    every run left is held or waiting, this one checks again every ``poll`` seconds (the runs it waits on may add
    runs to the plan), and it stops when none is left.
    """
    common = dict(common or {})
    work = Path(work_dir).resolve()
    device_type = device.split(":")[0]
    done: list[str] = []
    while max_runs is None or len(done) < max_runs:
        finished = load_summaries(summaries)
        runs = plan_runs(seeds, choose(finished, seeds))
        todo = [
            r for r in runs
            if finished.get(r.name, {}).get("fingerprint") != run_fingerprint(r, common, device_type)
            and (only is None or any(r.name == o or r.name.startswith(f"{o}-s") for o in only))
            and r.name not in done
        ]  # fmt: skip
        if not todo:
            break
        chosen, waiting = None, []
        for run in todo:
            holder = _stage1_elsewhere(work, run, runs)
            if holder is not None:
                waiting.append(f"{run.name} (for the stage 1 of {holder})")
            elif _claim(work, run.name):
                chosen = run
                break
            else:
                waiting.append(f"{run.name} (held by another runner)")
        if chosen is None:
            logger.info("study: waiting: %s", ", ".join(waiting))
            time.sleep(poll)
            continue
        try:
            fingerprint = load_summaries(summaries).get(chosen.name, {}).get("fingerprint")
            if fingerprint != run_fingerprint(chosen, common, device_type):  # else another runner has just finished it
                run_one(chosen, work, summaries, common, device, threads)
                done.append(chosen.name)
        finally:
            _release(work, chosen.name)
    return done


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the running training is stopped and the claim released


def _runner(kwargs: dict[str, Any], results: Any) -> None:
    """One runner of :func:`run_study_workers` (a spawned process): logs to stderr, stops cleanly on SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    results.put(run_study(**kwargs))


def run_study_workers(
    workers: int = 1,
    work_dir: str | os.PathLike = "eval/study",
    summaries: str | os.PathLike = "docs/study/runs",
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    threads: int | None = None,
    common: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    max_runs: int | None = None,
    poll: float = 30.0,
) -> list[str]:
    """``workers`` runners of :func:`run_study` side by side, each its own process with ``threads`` torch threads
    (default: the cores shared out between them); returns the runs they did. The other arguments: :func:`run_study`.

    When one runner fails, or this process is interrupted or sent SIGTERM, every runner is stopped with its training
    (each stopped run keeps its CPU time and resumes next time) and the error is raised.
    """
    threads = threads or max(1, (os.cpu_count() or 2) // workers)
    kwargs = {"work_dir": work_dir, "summaries": summaries, "seeds": list(seeds), "device": device, "threads": threads,
              "common": common, "only": only, "max_runs": max_runs, "poll": poll}  # fmt: skip
    if workers <= 1:
        return run_study(**kwargs)
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    runners = [context.Process(target=_runner, args=(kwargs, results), name=f"runner-{i + 1}")
               for i in range(workers)]  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        for runner in runners:
            runner.start()
        while any(r.is_alive() for r in runners) and all(r.exitcode in (None, 0) for r in runners):
            time.sleep(1.0)
    finally:
        stopped = [r.name for r in runners if r.is_alive()]
        for runner in runners:
            if runner.is_alive():
                runner.terminate()
        for runner in runners:
            runner.join()
        signal.signal(signal.SIGTERM, previous)
    failed = [f"{r.name} (exit {r.exitcode})" for r in runners if r.exitcode != 0 and r.name not in stopped]
    if failed:
        others = ", ".join(stopped) or "none"
        raise RuntimeError(f"study runner(s) failed: {', '.join(failed)}; the log above says why. The others were "
                           f"stopped ({others}); `scripts/study.py run` resumes the study.")  # fmt: skip
    done: list[str] = []
    while not results.empty():
        done += results.get()
    return done
