"""How real the phantom looks next to real VFSS frames, and what a trained model finds in real frames.

    python scripts/realism.py compare --real path/to/real_frames/ --out_dir eval/realism
    python scripts/realism.py predict --frames path/to/real_frames/ --checkpoint models/model.pt --out_dir eval/realism

`compare` writes <out_dir>/realism.{md,json,png}: intensity histograms of the exposed pixels, field coverage,
saturated share and edge density of the phantom and of the real frames, side by side. `predict` writes
<out_dir>/predictions.png (the model's masks on each frame as given, aspect-true) and predictions.json (the pixel
area found of each structure per frame). Existing outputs are kept under a timestamped name.
"""

from __future__ import annotations

import logging

import fire
from vfss_agglo_bundle.realism import compare as compare_frames
from vfss_agglo_bundle.realism import prediction_sheet, read_frames
from vfss_agglo_bundle.utils.io import write_json, write_text
from vfss_agglo_bundle.visualize import save_png


def compare(real: str, out_dir: str = "eval/realism", phantom_studies: int = 4) -> str:
    """Statistics of the phantom and of the real frames (a file or a folder); prints the table."""
    result = compare_frames(read_frames(real), phantom_studies)
    save_png(f"{out_dir}/realism.png", result.pop("figure"), keep_old=True)
    write_text(f"{out_dir}/realism.md", result["markdown"], keep_old=True)
    write_json(f"{out_dir}/realism.json", result, keep_old=True)
    print(result["markdown"])
    return f"{out_dir}/realism.png"


def predict(
    frames: str,
    checkpoint: str = "models/model.pt",
    out_dir: str = "eval/realism",
    student: str = "efficientvit_b0",
    image_size: int = 256,
    crop_field: bool = False,
) -> str:
    """The model's masks on each real frame as a contact sheet; prints what it found in each."""
    sheet, found = prediction_sheet(read_frames(frames), checkpoint, student, image_size, crop_field=crop_field)
    save_png(f"{out_dir}/predictions.png", sheet, keep_old=True)
    write_json(f"{out_dir}/predictions.json", found, keep_old=True)
    for name, areas in found.items():
        print(f"{name}: " + ", ".join(f"{task} {area} px" for task, area in areas.items() if area) or "nothing")
    return f"{out_dir}/predictions.png"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    fire.Fire({"compare": compare, "predict": predict})
