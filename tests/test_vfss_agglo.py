"""The Model Zoo's unit test for this bundle, written as the zoo writes them (``ci/unit_tests/test_<bundle>.py``).

A fake dataset, then the three workflows through ``ConfigWorkflow`` with the zoo's default run id (``run``):
train (properties checked, then run), evaluate (``[train, evaluate]`` configs, as the zoo merges them) and
infer (properties checked, weights not loaded). Tiny random teachers and a tiny phantom keep it to seconds.
The configs pull ``configs/common.yaml`` in by a path relative to the bundle root, so the test runs from there.
"""

import os
import shutil
import tempfile
import unittest

import numpy as np
from conftest import ROOT
from monai.bundle import ConfigWorkflow
from PIL import Image
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset

TEST_CASE_TRAIN = {  # train, evaluate; the phantom settings of the dataset the test writes
    "image_size": 64,
    "phantom_studies": 4,
    "phantom_frames": 2,
    "phantom_test_frames": 2,
    "distill_frames_per_study": 100,
    "teachers": ["medsam", "rad_dino"],
    "teacher_preset": "tiny",
    "distill_epochs": 1,
    "seg_epochs": 1,
    "val_interval": 1,
    "distill_batch_size": 2,
    "seg_batch_size": 2,
}
TEST_CASE_INFER = {"image_size": 64, "handlers#0#_disabled_": True}  # inference; do not load weights


class TestVFSSAggloSegmentation(unittest.TestCase):
    def setUp(self):
        self.cwd = os.getcwd()
        os.chdir(ROOT)
        self.bundle_root = tempfile.mkdtemp()
        self.dataset_dir = os.path.join(self.bundle_root, "data", "phantom")
        self.produce_fake_dataset()

    def produce_fake_dataset(self):
        synthesize_dataset(self.dataset_dir, studies=4, frames=2, test_frames=None, image_size=64)
        self.frames_dir = os.path.join(self.bundle_root, "frames")
        os.makedirs(self.frames_dir)
        for i in range(2):
            frame = np.random.default_rng(i).integers(0, 255, (80, 72), dtype=np.uint8)
            Image.fromarray(frame).save(os.path.join(self.frames_dir, f"{i:04d}.png"))

    def tearDown(self):
        os.chdir(self.cwd)
        shutil.rmtree(self.bundle_root)

    def workflow(self, workflow_type, config_file, override):
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=config_file,
            logging_file="configs/logging.conf",
            meta_file="configs/metadata.json",
            bundle_root=self.bundle_root,
            dataset_dir=self.dataset_dir,
            **override,
        )

    def test_train_eval_config(self):
        trainer = self.workflow("train", "configs/train.yaml", TEST_CASE_TRAIN)
        trainer.initialize()
        check_result = trainer.check_properties()
        if check_result is not None and len(check_result) > 0:
            raise ValueError(f"check properties for train config failed: {check_result}")
        trainer.run()
        trainer.finalize()
        self.assertTrue(os.path.isfile(os.path.join(self.bundle_root, "models", "model.pt")))

        validator = self.workflow("eval", ["configs/train.yaml", "configs/evaluate.yaml"], TEST_CASE_TRAIN)
        validator.initialize()
        validator.run()
        validator.finalize()
        with open(os.path.join(self.bundle_root, "eval", "report.md")) as report:
            self.assertIn("| **mean** |", report.read())

    def test_infer_config(self):
        override = {**TEST_CASE_INFER, "input": self.frames_dir, "output_dir": os.path.join(self.bundle_root, "out")}
        inferrer = self.workflow("infer", "configs/inference.json", override)
        inferrer.initialize()
        check_result = inferrer.check_properties()
        if check_result is not None and len(check_result) > 0:
            raise ValueError(f"check properties for inference config failed: {check_result}")
        inferrer.run()
        inferrer.finalize()
        masks = sorted(os.listdir(os.path.join(self.bundle_root, "out", "masks", "frames")))
        self.assertEqual(masks, ["0000.nii.gz", "0001.nii.gz"])


if __name__ == "__main__":
    unittest.main()
