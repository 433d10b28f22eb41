"""Annotations from the tools labs use, into the bundle's own format: COCO JSON, CVAT for video 1.1 XML, LabelMe JSON.

Each reader turns its format into :class:`AnnotatedFrame` objects (a frame, where to read its image, its shapes in
pixel coordinates); :func:`write_annotated` rasterises the shapes into one mask channel per task and writes frames,
labels, the datalist and, for point shapes, ``points.csv`` (frame, structure, x, y: what ``scripts/kinematics.py
validate --points`` reads). Polygons and RLE masks are rasterised by ``pycocotools`` (COCO's own code), lines and
circles by PIL's ``ImageDraw``; nothing by hand.

Tool labels map to tasks through :class:`LabelMap`: common synonyms are built in ("hyoid bone", "C2 vertebra",
"food bolus", ...), a user's map (``--label_map map.yaml``: ``tool label: task``, or ``tool label: null`` to leave
a label out on purpose) comes first. A label that maps to nothing stops the import with every such label listed,
before anything is written.

Frames keep their own size: studies may differ (``LoadVFSSFramed`` letterboxes every frame to the canonical square).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm
from vfss_agglo_bundle.data.datalist import build_datalist
from vfss_agglo_bundle.data.formats import to_grey_uint8, write_frame, write_label
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.data.video import SequentialVideo
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, write_json

__all__ = [
    "SYNONYMS",
    "AnnotatedFrame",
    "LabelMap",
    "Shape",
    "load_label_map",
    "read_coco",
    "read_cvat_video",
    "read_labelme",
    "shape_mask",
    "write_annotated",
]

logger = logging.getLogger(__name__)

INSTALL_PYCOCOTOOLS = 'pip install pycocotools (or pip install -e ".[annotations]")'
LINE_WIDTH = 3  # pixels: open polylines (a traced wall) become strokes this wide

# normalised tool label -> task; normalising lowercases, turns "_" and "-" into spaces and collapses spaces
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("bolus", "food bolus", "barium", "barium bolus", "contrast", "contrast bolus"), "bolus"),
    **dict.fromkeys(("pharynx", "pharyngeal lumen", "pharyngeal space", "pharyngeal cavity"), "pharynx"),
    **dict.fromkeys(("mandible", "jaw", "lower jaw", "mandibula"), "mandible"),
    **dict.fromkeys(("hyoid", "hyoid bone", "os hyoideum"), "hyoid"),
    **dict.fromkeys(("epiglottis", "epiglottic"), "epiglottis"),
    "atlas": "c1",
    "axis": "c2",
    **{
        name.format(k=k): f"c{k}"
        for k in range(1, 8)
        for name in (
            "c{k}",
            "c{k} vertebra",
            "vertebra c{k}",
            "c{k} vertebral body",
            "cervical vertebra {k}",
            "cervical {k}",
        )  # fmt: skip
    },
}


def normalise_label(label: str) -> str:
    """``"C2_Vertebra "`` -> ``"c2 vertebra"``."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(label)).strip().lower())


class LabelMap:
    """Tool labels -> tasks: ``user`` (exact tool labels, or normalised; value None leaves the label out) first, then
    :data:`SYNONYMS`; only labels that end on one of ``tasks`` count.

    Args:
        tasks: the dataset's tasks.
        user: a user's map, e.g. read from ``map.yaml``.
    """

    def __init__(self, tasks: Sequence[str] = DEFAULT_TASKS, user: Mapping[str, str | None] | None = None) -> None:
        self.tasks = list(tasks)
        self.user = {normalise_label(k): v for k, v in (user or {}).items()}
        wrong = {k: v for k, v in self.user.items() if v is not None and v not in self.tasks}
        if wrong:
            raise ValueError(f"label map entries {wrong} name no task; tasks are {self.tasks} (or null to leave out).")

    def task(self, label: str) -> str | None:
        """The task of ``label``, None when the user's map leaves it out; KeyError when nothing maps it."""
        key = normalise_label(label)
        if key in self.user:
            return self.user[key]
        found = SYNONYMS.get(key, key if key in self.tasks else None)
        if found is None or found not in self.tasks:
            raise KeyError(label)
        return found

    def check(self, labels: Iterable[str], source: PathLike) -> None:
        """One ``ValueError`` listing every label of ``source`` that maps to nothing (with how to map it)."""
        unknown = []
        for label in sorted(set(labels)):
            try:
                self.task(label)
            except KeyError:
                unknown.append(label)
        if unknown:
            example = "\n".join(f"  {label!r}: <one of {self.tasks} or null>" for label in unknown[:5])
            raise ValueError(
                f"{source}: {len(unknown)} label(s) map to no task: {unknown}. Give a label map (--label_map map.yaml) "
                f"with a line per label, e.g.\n{example}\n(null leaves a label out on purpose)."
            )


@dataclass
class Shape:
    """One annotated shape, in pixel coordinates of its frame (x right, y down, pixel centres at integer + 0.5).

    kind: ``polygon`` (``points`` [[x, y], ...]), ``line`` (an open polyline), ``point`` ([[x, y]]), ``circle``
    (centre and a point on the circle), ``rle`` (``data``: a COCO RLE dict) or ``mask`` (``data``: a bool array
    ``[h, w]`` placed at ``offset`` (x, y)).
    """

    label: str
    kind: str
    points: list[list[float]] = field(default_factory=list)
    data: Any = None
    offset: tuple[int, int] = (0, 0)


@dataclass
class AnnotatedFrame:
    """One frame: its study and index, its size, how to read its image, its shapes."""

    study: str
    frame: int
    height: int
    width: int
    image: Callable[[], np.ndarray]
    shapes: list[Shape] = field(default_factory=list)
    source: str = ""


def _mask_util():
    try:
        from pycocotools import mask
    except ImportError as err:
        raise ModuleNotFoundError(f"importing annotations needs pycocotools: {INSTALL_PYCOCOTOOLS}") from err
    return mask


def shape_mask(shape: Shape, height: int, width: int, line_width: int = LINE_WIDTH) -> np.ndarray:
    """``[height, width]`` bool mask of a region shape (points give none: they go to ``points.csv``)."""
    if shape.kind in ("polygon", "rle"):
        mask_util = _mask_util()
        if shape.kind == "polygon":
            rle = mask_util.merge(mask_util.frPyObjects([list(np.ravel(shape.points))], height, width))
        else:
            rle = shape.data
            if isinstance(rle.get("counts"), list):  # uncompressed RLE
                rle = mask_util.frPyObjects(rle, height, width)
        decoded = mask_util.decode(rle).astype(bool)
        if decoded.shape != (height, width):
            raise DataFormatError(
                f"an RLE mask of label {shape.label!r} is {decoded.shape}, its frame {height}x{width}."
            )
        return decoded
    if shape.kind == "mask":
        out = np.zeros((height, width), dtype=bool)
        x, y = shape.offset
        part = np.asarray(shape.data, dtype=bool)[: max(0, height - y), : max(0, width - x)]
        out[y : y + part.shape[0], x : x + part.shape[1]] = part
        return out
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    pts = [(float(x) - 0.5, float(y) - 0.5) for x, y in shape.points]  # PIL: pixel centres at integers
    if shape.kind == "line":
        draw.line(pts, fill=1, width=line_width)
    elif shape.kind == "circle":
        (cx, cy), (px, py) = pts[:2]
        r = float(np.hypot(px - cx, py - cy))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape.kind != "point":
        raise ValueError(f"unknown shape kind {shape.kind!r} (label {shape.label!r}).")
    return np.asarray(canvas, dtype=bool)


def write_annotated(
    frames: Sequence[AnnotatedFrame],
    out_dir: PathLike,
    label_map: LabelMap,
    source: PathLike,
    ratios: Sequence[float] = (9, 3, 4),
    seed: int = 0,
    line_width: int = LINE_WIDTH,
) -> Path:
    """Rasterise and write ``frames`` as a bundle dataset (``datalist.json``, ``images/``, ``labels/``, ``points.csv``
    when there are point shapes); returns the datalist path. Refuses an existing dataset and unknown labels before
    writing anything."""
    out_dir = Path(out_dir)
    datalist_path = out_dir / "datalist.json"
    if datalist_path.exists():
        raise FileExistsError(f"{datalist_path} already exists; delete {out_dir} or choose another folder.")
    if not frames:
        raise DataFormatError(f"{source}: no annotated frames found.")
    label_map.check((s.label for f in frames for s in f.shapes), source)
    tasks, items, points = label_map.tasks, [], []
    for frame in tqdm(frames, desc="import frames", unit="frame"):
        image = to_grey_uint8(np.asarray(frame.image()))
        if image.shape != (frame.height, frame.width):
            raise DataFormatError(f"{frame.source}: the image is {image.shape[0]}x{image.shape[1]}, its annotation "
                                  f"says {frame.height}x{frame.width}.")  # fmt: skip
        label = np.zeros((len(tasks), frame.height, frame.width), dtype=np.uint8)
        for shape in frame.shapes:
            task = label_map.task(shape.label)
            if task is None:
                continue
            if shape.kind == "point":
                points += [(frame.study, frame.frame, task, float(x), float(y)) for x, y in shape.points]
                continue
            label[tasks.index(task)] |= shape_mask(shape, frame.height, frame.width, line_width)
        image_path, label_path = (
            f"images/{frame.study}/{frame.frame:04d}.png",
            f"labels/{frame.study}/{frame.frame:04d}.nii.gz",
        )
        write_frame(out_dir / image_path, image)
        write_label(out_dir / label_path, label)
        items.append({"image": image_path, "label": label_path, "study": frame.study, "frame": frame.frame,
                      "source": frame.source})  # fmt: skip
    if points:
        with open(out_dir / "points.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["study", "frame", "structure", "x", "y"])
            writer.writerows(sorted(points))
    size = max(max(f.height, f.width) for f in frames)
    write_json(datalist_path, build_datalist(items, tasks, size, ratios, seed))
    logger.info("imported %d frames of %d studies from %s (%d points)", len(items),
                len({f.study for f in frames}), source, len(points))  # fmt: skip
    return datalist_path


def _image_reader(path: Path) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.array(im)
        except OSError as err:
            raise DataFormatError(f"{path} cannot be read as an image ({err}).") from err

    return read


def _bytes_reader(data: bytes, source: Path) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        try:
            return np.array(Image.open(io.BytesIO(data)))
        except OSError as err:
            raise DataFormatError(f"{source}: its embedded image cannot be read ({err}).") from err

    return read


def load_label_map(path: PathLike | None, tasks: Sequence[str] = DEFAULT_TASKS) -> LabelMap:
    """A :class:`LabelMap` from a YAML file of ``tool label: task`` lines (``null``: leave out); None: synonyms only."""
    if path is None:
        return LabelMap(tasks)
    import yaml

    try:
        user = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataFormatError(f"cannot read the label map {path} ({err}).") from err
    if not isinstance(user, dict):
        raise DataFormatError(
            f"{path}: a label map is a mapping of 'tool label: task' lines, not a {type(user).__name__}."
        )
    try:
        return LabelMap(tasks, user)
    except ValueError as err:
        raise DataFormatError(f"{path}: {err}") from err


def _study_and_frame(frames: Sequence[tuple[str, Any]]) -> dict[Any, tuple[str, int]]:
    """``(study, key)`` pairs -> key -> (study, index of the key within its study, keys sorted)."""
    out, by_study = {}, {}
    for study, key in frames:
        by_study.setdefault(study, []).append(key)
    for study, keys in by_study.items():
        out.update({key: (study, i) for i, key in enumerate(sorted(keys, key=str))})
    return out


def read_coco(path: PathLike, images_dir: PathLike | None = None) -> list[AnnotatedFrame]:
    """A COCO instances JSON: polygons and RLE (``iscrowd`` or not), categories by name. The study of an image is
    the folder of its ``file_name`` (``<study>/<frame>.png``), else the JSON file's stem; frames are ordered by
    file name. Images are read from ``images_dir`` (default: the JSON's folder)."""
    path = Path(path)
    try:
        coco = json.loads(path.read_text())
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        images = {im["id"]: im for im in coco["images"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataFormatError(f"{path} is not a COCO annotation file ({type(err).__name__}: {err}).") from err
    root = Path(images_dir) if images_dir is not None else path.parent
    order = _study_and_frame([(Path(im["file_name"]).parent.name or path.stem, i) for i, im in images.items()])
    frames = {}
    for image_id, im in images.items():
        study, index = order[image_id]
        file = root / im["file_name"]
        frames[image_id] = AnnotatedFrame(
            study, index, int(im["height"]), int(im["width"]), _image_reader(file), source=str(file)
        )
    for ann in coco.get("annotations", []):
        frame = frames.get(ann.get("image_id"))
        if frame is None or ann.get("category_id") not in categories:
            raise DataFormatError(f"{path}: annotation {ann.get('id')} names an image or category that is not listed.")
        label, segmentation = categories[ann["category_id"]], ann.get("segmentation")
        if isinstance(segmentation, dict):
            frame.shapes.append(Shape(label, "rle", data=segmentation))
        else:
            frame.shapes += [Shape(label, "polygon", np.reshape(p, (-1, 2)).tolist()) for p in segmentation or []]
    return sorted(frames.values(), key=lambda f: (f.study, f.frame))


def _cvat_points(text: str) -> list[list[float]]:
    return [[float(v) for v in pair.split(",")] for pair in text.split(";") if pair]


def _cvat_shape(element: ElementTree.Element, label: str) -> Shape | None:
    kind = element.tag
    if kind in ("polygon", "polyline", "points"):
        pts = _cvat_points(element.get("points", ""))
        name = {"polygon": "polygon", "polyline": "line", "points": "point"}[kind]
        return Shape(label, name, pts)
    if kind == "box":
        x0, y0, x1, y1 = (float(element.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
        return Shape(label, "polygon", [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if kind == "mask":  # CVAT 2.x: run lengths over the box [left, top, width, height], alternating 0s and 1s
        left, top, w, h = (int(float(element.get(k))) for k in ("left", "top", "width", "height"))
        runs = [int(v) for v in element.get("rle", "").split(",") if v.strip()]
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        if flat.size != w * h:
            raise DataFormatError(f"a CVAT mask of label {label!r} has {flat.size} pixels, its box {w}x{h}.")
        return Shape(label, "mask", data=flat.reshape(h, w), offset=(left, top))
    return None


def _interpolate(a: Shape, b: Shape, t: float) -> Shape:
    """CVAT's linear interpolation between two keyframes of a track (same number of points)."""
    pa, pb = np.asarray(a.points), np.asarray(b.points)
    return Shape(a.label, a.kind, ((1 - t) * pa + t * pb).tolist())


def read_cvat_video(path: PathLike, frames: PathLike, study: str | None = None) -> list[AnnotatedFrame]:
    """A "CVAT for video 1.1" XML export: tracks (between two keyframes a shape is interpolated linearly when both
    have the same number of points, else held; held after the last keyframe to the end of the task; gone while
    ``outside``) and per-frame shapes (polygons, polylines, points, boxes, masks). ``frames``
    is the annotated video or a folder of its frames (sorted by name); the study is ``study`` or the XML's stem."""
    path, frames = Path(path), Path(frames)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as err:
        raise DataFormatError(f"{path} is not a CVAT XML file ({err}).") from err
    size = root.find("meta/task/original_size")
    if size is None:
        size = root.find("meta/job/original_size")
    if size is None:
        raise DataFormatError(f"{path}: no <original_size> in <meta>; export the task as 'CVAT for video 1.1'.")
    height, width = int(size.findtext("height")), int(size.findtext("width"))
    images = _frame_source(frames)
    length = int(root.findtext("meta/task/size") or root.findtext("meta/job/size") or 0)
    shapes: dict[int, list[Shape]] = {}
    for track in root.iter("track"):
        label = track.get("label", "")
        keys = sorted(((int(e.get("frame")), e) for e in track if e.get("frame") is not None), key=lambda p: p[0])
        for (f0, e0), (f1, e1) in zip(keys, [*keys[1:], (max(length, keys[-1][0] + 1), None)], strict=True):
            s0 = None if e0.get("outside") == "1" else _cvat_shape(e0, label)
            if s0 is None:
                continue
            s1 = None if e1 is None or e1.get("outside") == "1" else _cvat_shape(e1, label)
            for f in range(f0, f1):  # until the next keyframe: interpolated towards it, else held (CVAT's rule)
                moving = s1 is not None and s0.kind != "mask" and len(s1.points) == len(s0.points)
                shapes.setdefault(f, []).append(_interpolate(s0, s1, (f - f0) / (f1 - f0)) if moving else s0)
    for image in root.iter("image"):  # "CVAT for images" exports, or annotations outside tracks
        f = int(image.get("id"))
        shapes.setdefault(f, []).extend(s for e in image if (s := _cvat_shape(e, e.get("label", ""))) is not None)
    study = study or path.stem
    return [AnnotatedFrame(study, f, height, width, images(f), shapes[f], source=f"{frames}#{f}")
            for f in sorted(shapes) if shapes[f]]  # fmt: skip


def _frame_source(frames: Path) -> Callable[[int], Callable[[], np.ndarray]]:
    """Frame index -> a reader of that frame, from a folder of images or a video (every decoded frame, numbered as
    CVAT numbers them)."""
    if frames.is_dir():
        files = sorted(p for p in frames.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))
        return lambda f: _image_reader(files[f]) if f < len(files) else _missing(frames, f, len(files))
    video = SequentialVideo(frames)  # annotated frames are read in order: each decoded once, none kept
    return lambda f: lambda: video[f]


def _missing(folder: Path, f: int, n: int) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        raise DataFormatError(f"{folder} has {n} frames; the annotation names frame {f}.")

    return read


def read_labelme(folder: PathLike) -> list[AnnotatedFrame]:
    """LabelMe JSON files, one per frame, under ``folder`` (``<study>/<frame>.json``, or flat: one study named after
    the folder): polygons, rectangles, circles, lines and line strips, points and masks; the image is ``imagePath``
    beside the JSON, or the embedded ``imageData``."""
    folder = Path(folder)
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise FileNotFoundError(f"no LabelMe .json files under {folder}.")
    order = _study_and_frame([(p.parent.name if p.parent != folder else folder.name, p) for p in files])
    frames = []
    for file in files:
        try:
            doc = json.loads(file.read_text())
            height, width = int(doc["imageHeight"]), int(doc["imageWidth"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataFormatError(f"{file} is not a LabelMe file ({type(err).__name__}: {err}).") from err
        study, index = order[file]
        if doc.get("imageData"):
            image = _bytes_reader(base64.b64decode(doc["imageData"]), file)
        else:
            image = _image_reader(file.parent / doc.get("imagePath", ""))
        shapes = [_labelme_shape(shape, file) for shape in doc.get("shapes", [])]
        frames.append(AnnotatedFrame(study, index, height, width, image, shapes, source=str(file)))
    return sorted(frames, key=lambda f: (f.study, f.frame))


def _labelme_shape(shape: Mapping[str, Any], file: Path) -> Shape:
    label, kind, pts = shape.get("label", ""), shape.get("shape_type") or "polygon", shape.get("points", [])
    if kind == "rectangle":
        (x0, y0), (x1, y1) = pts[:2]
        return Shape(label, "polygon", [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if kind in ("polygon", "circle", "point"):
        return Shape(label, kind, pts)
    if kind in ("line", "linestrip"):
        return Shape(label, "line", pts)
    if kind == "points":
        return Shape(label, "point", pts)
    if kind == "mask":  # LabelMe >= 5.3: a PNG of the box between the two points
        (x0, y0), _ = pts[:2]
        mask = np.array(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) > 0
        return Shape(label, "mask", data=mask, offset=(int(round(x0)), int(round(y0))))
    raise DataFormatError(f"{file}: shape type {kind!r} of label {label!r} is not supported.")
