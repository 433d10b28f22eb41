"""The speed benchmark's helpers and reports (correctness only: nothing here checks how fast anything is)."""

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import ROOT
from vfss_agglo_bundle.benchmark import (
    FULL_RANDOM,
    MIN_RUNS,
    REAL,
    TINY,
    Entry,
    Measurement,
    count_flops,
    count_params,
    describe_machine,
    inference_ablation,
    measure,
    run_benchmark,
    speed_ratios,
    teacher_targets,
    to_markdown,
    write_report,
)
from vfss_agglo_bundle.benchmark.measure import random_images
from vfss_agglo_bundle.benchmark.targets import distill_step_targets, distill_trainer
from vfss_agglo_bundle.benchmark.teacher_cost import store_bytes_per_frame, teacher_cost
from vfss_agglo_bundle.benchmark.video import VARIANTS as VIDEO_VARIANTS
from vfss_agglo_bundle.engines import DistillationTrainer
from vfss_agglo_bundle.teachers import hed
from vfss_agglo_bundle.teachers.registry import build_teacher
from vfss_agglo_bundle.teachers.store import TeacherFeatureStore


def test_count_flops_and_params_of_a_conv():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    # 4 x 8 x 8 outputs, each 1 x 3 x 3 multiply-adds = 2 FLOPs
    assert count_flops(lambda: conv(torch.rand(1, 1, 8, 8))) == 2 * 4 * 8 * 8 * 9
    assert count_params(conv) == 4 * 9 + 4


def test_measure_respects_repeats_and_is_consistent():
    calls = []
    m = measure(lambda: calls.append(1), batch=4, device=torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 2 + 5 and m.runs == 5 and m.batch == 4
    assert 0 < m.median_ms <= m.p90_ms
    assert m.frames_per_s == pytest.approx(4 * 1000 / m.median_ms)
    few = measure(lambda: None, batch=1, device=torch.device("cpu"), warmup=0, repeats=1, max_seconds=0.0)
    assert few.runs == 1  # repeats caps the count even below MIN_RUNS
    timed = measure(lambda: None, batch=1, device=torch.device("cpu"), warmup=0, repeats=50, max_seconds=0.0)
    assert timed.runs == MIN_RUNS  # past max_seconds: stop at the minimum


def test_describe_machine_has_the_basics():
    machine = describe_machine()
    assert machine["torch"] == torch.__version__
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["torch_threads"] >= 1
    assert isinstance(machine["gpus"], list)


def test_teacher_weight_labels(tmp_path):
    names = ["litemedsam", "medsam", "medclip"]
    labels = {t.name: t.weights for t in teacher_targets(names, tmp_path)}
    assert labels == {"litemedsam": REAL, "medsam": TINY, "medclip": TINY}
    packaged = {t.name: t.weights for t in teacher_targets(["hed", "ct_clip_r152", "hog"], tmp_path)}
    assert packaged == {"hed": REAL, "ct_clip_r152": REAL, "hog": REAL}
    labels = {t.name: t.weights for t in teacher_targets(names, tmp_path, full_size_random=True)}
    assert labels == {"litemedsam": REAL, "medsam": TINY, "medclip": FULL_RANDOM}
    labels = {t.name: t.weights for t in teacher_targets(names, tmp_path, include_medsam=True)}
    assert labels == {"litemedsam": REAL, "medsam": FULL_RANDOM, "medclip": TINY}
    with pytest.raises(ValueError, match="unknown teacher"):
        teacher_targets(["sam3"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, params_m, grid, dense_dim",
    [
        ("medsam", 89.7, (64, 64), 256),
        ("rad_dino", 86.6, (37, 37), 768),
        ("medclip", 27.9, (7, 7), 768),
        ("biomedclip", 86.2, (14, 14), 768),
    ],
)
def test_full_size_random_teachers_have_the_real_architecture(name, params_m, grid, dense_dim):
    teacher = build_teacher(name, preset="full", random_weights=True)
    assert teacher.name == name and teacher.grid == grid and teacher.dense_dim == dense_dim
    assert count_params(teacher) / 1e6 == pytest.approx(params_m, rel=0.02)


def _hed_gflops(size: int) -> float:
    """HED's FLOPs by hand: each 3x3 conv 2 * 9 * C_in * C_out per output pixel, the 1x1 side and fuse convs
    2 * C_in each per pixel of their map (FlopCounterMode counts convolutions only)."""
    layers = hed.PRESETS["full"]["layers"]
    flops, c_in, side = 0, 3, size
    for item in [*layers, "M"]:
        if item == "M":
            flops += 2 * c_in * side * side  # the side output's 1x1 conv
            side //= 2
            continue
        flops += 2 * 9 * c_in * item * side * side
        c_in = item
    return (flops + 2 * 5 * size * size) / 1e9  # the fuse conv


def test_teacher_cost_rows_by_hand():
    report = teacher_cost(["hed", "hog"], sizes=(64, 128), threads=2, repeats=1)
    hed_row, hog_row = report["rows"]
    assert hed_row["params_m"] == pytest.approx(14.716171)
    for size, grid in ((64, 16), (128, 32)):
        cell = hed_row["sizes"][str(size)]
        assert cell["input"] == f"3x{size}x{size}" and cell["dense"] == f"6x{grid}x{grid}"
        assert cell["gflops"] == pytest.approx(_hed_gflops(size), rel=1e-6)
        assert cell["seconds"] > 0 and cell["summary"] is None
    assert hog_row["sizes"]["128"]["dense"] == "9x16x16"


def test_store_bytes_per_frame_is_the_size_of_a_stored_entry(tmp_path):
    teacher = build_teacher("ct_clip_r152", None, "tiny")  # dense and summary
    store = TeacherFeatureStore(tmp_path, teacher)
    store.fill([{"image": "x", "study": "s", "frame": 0}], lambda item: torch.rand(1, 64, 64), progress=False)
    spec = teacher.spec
    assert (
        store_bytes_per_frame((spec.dense_dim, *spec.grid), spec.summary_dim) == store.path("s/0000", 0).stat().st_size
    )


def test_speed_ratios_pair_each_student_with_each_teacher():
    def entry(name, group, ms, device="cpu", batch=1):
        return Entry(name, group, "w", device, "1x8x8", 1, None, [Measurement(batch, ms, ms, 1.0, None, 3)])

    entries = [
        entry("s", "student", 2.0),
        entry("s", "student (optimized)", 1.0),
        entry("t1", "teacher", 100.0),
        entry("t2", "teacher", 50.0, batch=8),  # no batch-1 number: left out
        entry("s", "student", 4.0, device="cuda"),
        entry("t1", "teacher", 8.0, device="cuda"),
    ]
    assert speed_ratios(entries) == {
        "cpu": {"s [student]": {"t1": 50.0}, "s [student (optimized)]": {"t1": 100.0}},
        "cuda": {"s [student]": {"t1": 2.0}},
    }


@pytest.mark.parametrize("online", [False, True], ids=["feature store", "online"])
def test_the_distillation_step_is_one_distillation_trainer_iteration(monkeypatch, online):
    """The timed step calls DistillationTrainer._iteration once, and moves the weights exactly as one iteration of
    the trainer's own run() on the same batch from the same initial weights."""
    calls = []
    iteration = DistillationTrainer._iteration

    def counted(self, engine, batchdata):
        calls.append((engine, batchdata))
        return iteration(self, engine, batchdata)

    monkeypatch.setattr(DistillationTrainer, "_iteration", counted)
    cpu = torch.device("cpu")
    target = distill_step_targets("efficientvit_b0", 64, batch_size=2, teacher="hog", online=online)[-1]
    assert target.name.endswith("online hog" if online else "feature store targets")
    built = target.build(cpu)
    built.forward(random_images(2, 64, cpu))
    assert len(calls) == 1
    engine, batch = calls[0]
    assert engine.network is built.module
    assert set(batch) == ({"image"} if online else {"image", "hog_dense"})

    reference = distill_trainer("efficientvit_b0", build_teacher("hog"), "attention", cpu, [batch], online)
    initial = {k: v.clone() for k, v in reference.network.state_dict().items()}
    reference.run()
    assert len(calls) == 2
    trained = reference.network.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)  # the iteration moved the weights
    torch.testing.assert_close(built.module.state_dict(), trained)
    torch.testing.assert_close(engine.balancer.state_dict(), reference.balancer.state_dict())


def _hyper(trainer: DistillationTrainer) -> dict:
    """What the benchmark's trainer must share with train.yaml's: optimizer settings per parameter group (the
    scheduler's starting learning rate, not its current one), clipping, balancer and loss."""
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in trainer.optimizer.param_groups]
    for group, original in zip(groups, trainer.optimizer.param_groups, strict=True):
        group["initial_lr"] = original.get("initial_lr", original["lr"])
    loss = trainer.loss_function
    return {
        "optimizer": type(trainer.optimizer).__name__,
        "groups": groups,
        "grad_clip": trainer.grad_clip,
        "balancer": type(trainer.balancer).__name__,
        "loss": (loss.dense_loss_names, loss.summary_weight, len(loss.standardizers)),
    }


@pytest.mark.slow
def test_the_benchmark_trainer_is_configured_as_train_yaml_s(tmp_path, monkeypatch):
    """The benchmark cannot drift from training: its DistillationTrainer has the optimizer groups, learning rates,
    weight decays, clipping, balancer and loss that configs/train.yaml builds."""
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(ROOT)
    workflow = ConfigWorkflow(config_file="configs/train.yaml", workflow_type="train", logging_file=False,
                              bundle_root=str(tmp_path), phantom_studies=3, phantom_frames=1, phantom_test_frames=1,
                              image_size=64,
                              teachers=["hog"], teacher_preset="tiny")  # fmt: skip
    workflow.initialize()
    for key in ("prepare_data", "teacher_store"):
        workflow.parser.get_parsed_content(key)
    configured = workflow.parser.get_parsed_content("distill#trainer")
    benchmark = distill_trainer("efficientvit_b0", build_teacher("hog"), "attention", torch.device("cpu"), [], False)
    assert _hyper(benchmark) == _hyper(configured)


@pytest.fixture(scope="module")
def tiny_report():
    return run_benchmark(
        backbones=["efficientvit_b0"],
        teachers=["medclip"],
        image_size=64,
        batch_size=2,
        threads=2,
        devices=["cpu"],
        onnx_dynamo=False,
        warmup=1,
        repeats=2,
    )


def test_benchmark_rows_and_json(tiny_report, tmp_path):
    rows = [(e["name"], e["group"], e["weights"]) for e in tiny_report["entries"]]
    student_weights = "random init (speed only)"
    assert rows == [
        ("efficientvit_b0", "student", student_weights),
        ("efficientvit_b0", "student (optimized)", student_weights),
        ("efficientvit_b0", "onnxruntime", student_weights),
        ("medclip", "teacher", TINY),
        (
            "efficientvit_b0: feature store targets",
            "distillation step",
            f"student {student_weights}; litemedsam {REAL}",
        ),
    ]
    by_group = {e["group"]: e for e in tiny_report["entries"]}
    student = by_group["student"]
    assert [m["batch"] for m in student["measurements"]] == [1, 2]
    assert all(m["runs"] == 2 and m["median_ms"] > 0 for m in student["measurements"])
    assert student["input"] == "1x64x64" and student["params"] > 100_000
    assert student["gflops_per_frame"] > 0 and by_group["onnxruntime"]["gflops_per_frame"] is None
    assert by_group["teacher"]["input"] == "3x224x224 (from 1x64x64)"
    step = by_group["distillation step"]
    assert [m["batch"] for m in step["measurements"]] == [2]
    assert step["gflops_per_frame"] > student["gflops_per_frame"]  # the step includes the backward pass
    students = {f"efficientvit_b0 [{group}]" for group in ("student", "student (optimized)", "onnxruntime")}
    assert set(tiny_report["ratios_batch1"]["cpu"]) == students
    assert tiny_report["settings"]["batches"] == [1, 2] and tiny_report["machine"]["torch_threads"] == 2

    json_path, md_path = write_report(tiny_report, tmp_path)
    assert json.loads(json_path.read_text())["entries"] == tiny_report["entries"]
    assert md_path.read_text() == to_markdown(tiny_report)
    write_report(tiny_report, tmp_path)  # the previous pair is kept under its timestamp, never overwritten
    assert len(list(tmp_path.glob("benchmark*.json"))) == 2 and len(list(tmp_path.glob("benchmark*.md"))) == 2


def test_benchmark_markdown(tiny_report):
    markdown = to_markdown(tiny_report)
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    assert "b1 median ms" in header and "b2 frames/s" in header
    table = [line for line in lines if line.startswith("| efficientvit_b0") or line.startswith("| medclip")]
    assert len(table) == 5 + 3  # 5 benchmark rows, 3 ratio rows
    assert all(line.count("|") == header.count("|") for line in table[:5])
    assert f"| medclip | teacher | {TINY} |" in markdown
    assert "How many times faster than each teacher (batch 1, median latency, cpu)" in markdown
    assert f"Machine: {tiny_report['machine']['cpu']}," in markdown


def test_benchmark_script_writes_reports(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.run(
        backbones="mobilenetv4_conv_small",
        teachers="rad_dino",
        image_size=64,
        batch_size=2,
        devices="cpu",
        optimized=False,
        onnx=False,
        distill=False,
        warmup=0,
        repeats=1,
        out_dir=str(tmp_path),
    )
    printed = capsys.readouterr().out
    assert "cpu mobilenetv4_conv_small [student]: rad_dino" in printed
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert [(e["name"], e["group"]) for e in report["entries"]] == [
        ("mobilenetv4_conv_small", "student"),
        ("rad_dino", "teacher"),
    ]
    assert (tmp_path / "benchmark.md").read_text().startswith("# Speed benchmark")


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_teachers_command_prints_a_row_per_teacher(tmp_path, capsys):
    _script().teachers(teachers="hog,hed", sizes="64,128", repeats=1, out_dir=str(tmp_path))
    printed = capsys.readouterr().out.splitlines()
    rows = [line for line in printed if line.startswith("| hog") or line.startswith("| hed")]
    assert rows[1].startswith("| hed | 14.7 | 3x64x64 | 6x16x16 | - | 3.2 | ") and len(rows[1].split("|")) == 12
    assert json.loads((tmp_path / "teacher_cost.json").read_text())["sizes"] == [64, 128]


@pytest.mark.slow
def test_store_fill_with_two_processes_is_byte_identical_at_the_same_threads(tmp_path, capsys):
    _script().store_fill(teachers="hog,hed", studies=4, frames=1, image_size=64, out_dir=str(tmp_path))
    report = json.loads((tmp_path / "store_fill.json").read_text())
    runs = {(r["processes"], r["threads"]): r for r in report["runs"]}
    assert set(runs) == {(1, 2), (2, 1), (1, 1)} and report["frames"] == 2
    two = runs[(2, 1)]["against_one_process_same_threads"]
    assert two["same_files"] and two["byte_identical"] == two["files"] == 2 * 2 + 2  # entries + meta.json
    assert runs[(2, 1)]["against_first"]["max_relative_difference"] < 2**-10  # other threads: fp16 rounding
    assert "2 process(es) x 1 thread(s)" in capsys.readouterr().out


def test_inference_ablation_rows(tmp_path):
    report = inference_ablation("efficientvit_b0", image_size=64, threads=2, video_batch=2, rounds=1, num_classes=3)
    rows = report["rows"]
    assert [r["variant"] for r in rows][0] == "eager, torch.no_grad (baseline)" and len(rows) == 7
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert [r["batch"] for r in rows] == [1] * 6 + [2] and [r["threads"] for r in rows][-2:] == [1, 2]
    assert all(r["max_abs_diff"] < 1e-4 and r["ms_per_frame"] > 0 for r in rows)
    json_path, md_path = write_report(report, tmp_path, stem="inference_ablation")
    assert md_path.read_text() == report["markdown"]
    assert "| optimize_for_inference, 1 thread | 1 | 1 |" in report["markdown"]
    assert "markdown" not in json.loads(json_path.read_text())


def test_video_throughput_runs_the_inference_config_end_to_end():
    from vfss_agglo_bundle.benchmark import video_throughput

    report = video_throughput(num_frames=12, image_size=64, fps=12.0, threads=2, repeats=2)
    rows = report["rows"]
    assert all(len(r["runs_s"]) == 2 and r["seconds"] == pytest.approx(np.median(r["runs_s"])) for r in rows)
    assert [r["variant"] for r in rows] == list(VIDEO_VARIANTS)
    assert all(r["seconds"] > 0 and r["frames_per_s"] == pytest.approx(12 / r["seconds"]) for r in rows)
    assert all(r["fps_read"] == pytest.approx(12.0) for r in rows)  # the MP4's own frame rate reached the kinematics
    assert report["settings"]["num_frames"] == 12 and report["settings"]["checkpoint"] is None


def test_soak_samples_the_child_s_memory_against_frames_written(tmp_path, monkeypatch):
    from vfss_agglo_bundle.benchmark import soak as soak_module
    from vfss_agglo_bundle.data.video import probe_video

    monkeypatch.setattr(soak_module, "WINDOW", 10)
    report = soak_module.soak(num_frames=40, width=200, height=120, big_frames=0, video_dir=tmp_path)
    (row,) = report["rows"].values()
    info = probe_video(tmp_path / "soak_200x120_40.mp4")
    assert (info.frames, info.width, info.height) == (40, 200, 120) and row["frames"] == 40
    # the child's own memory: a Python process with torch and MONAI takes well over 100 MB
    assert 100 < row["peak_rss_mb"] < 4000 and row["peak_rss_mb"] >= max(rss for _, _, rss in row["samples"])
    counts = [n for _, n, _ in row["samples"]]
    assert counts == sorted(counts) and counts[-1] <= 40 and row["gif_bytes"] > 0
    assert row["growth_mb"] == pytest.approx(row["last_window_mb"] - row["first_window_mb"], nan_ok=True)


def test_phantom_speed_reports_both_versions():
    from vfss_agglo_bundle.benchmark import phantom_speed

    report = phantom_speed(image_size=64, studies=1, frames=2)
    assert [r["phantom"] for r in report["rows"]] == ["v1", "v2"]
    assert all(r["frames"] == 2 and r["frames_per_s"] == pytest.approx(2 / r["seconds"]) for r in report["rows"])
    assert all(r["cpu_seconds"] > 0 for r in report["rows"]) and report["settings"]["image_size"] == 64


def test_training_throughput_times_both_steps_from_the_engine_s_own_events(monkeypatch, tmp_path):
    from vfss_agglo_bundle.benchmark import training_throughput

    monkeypatch.chdir(ROOT)
    report = training_throughput(image_size=64, batch_size=2, rounds=2)
    rows = {r["step"].split(" (")[0]: r for r in report["rows"]}
    assert list(rows) == ["stage 2, 0.7.0", "stage 2, this version", "stage 2 student encoder alone",
                          "validation forward", "stage 1"]  # fmt: skip
    assert rows["stage 2, 0.7.0"]["speedup"] == pytest.approx(1.0)
    assert rows["stage 2, this version"]["speedup"] == pytest.approx(
        rows["stage 2, this version"]["frames_per_s"] / rows["stage 2, 0.7.0"]["frames_per_s"]
    )
    assert rows["stage 1"]["speedup"] is None and rows["validation forward"]["speedup"] is None
    for name in ("stage 2, 0.7.0", "stage 2, this version", "stage 1"):
        r = rows[name]
        assert min(r["forward_ms"], r["backward_ms"], r["step_ms"]) > 0, name
        assert r["total_ms"] == pytest.approx(r["forward_ms"] + r["backward_ms"] + r["step_ms"], rel=0.3)
        assert r["frames_per_s"] == pytest.approx(2 / r["total_ms"] * 1e3)
    assert rows["validation forward"]["backward_ms"] == rows["validation forward"]["step_ms"] == 0
    assert 0 < report["encoder_share"] < 1.5
    assert [d["data"].split(" (")[0] for d in report["data"]] == ["0.7.0", "this version"]
    assert all(d["ms"] > 0 for d in report["data"])
    autocast = report["settings"]["autocast"]
    assert f"stage 2, this version ({autocast or 'float32'}, channels-last, DiceBCELoss)" in report["markdown"]
    json_path, md_path = write_report(report, tmp_path, stem="training_throughput")
    assert md_path.read_text() == report["markdown"] and "rows" in json.loads(json_path.read_text())
