"""Finding cells on smear fields with ultralytics YOLO, counting them and typing the white ones.

Training data comes as YOLO datasets (``data.yaml``) or Pascal VOC folders; both are rewritten
into one YOLO dataset whose classes are ours (``DETECTOR_CLASSES``), whatever each source calls
them. ultralytics is imported only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .inputs import IMAGE_SUFFIXES
from .settings import apply_offline_environment, settings

# Detector classes, in YOLO class-id order: white cells (typed further by the tree), red cells, platelets.
DETECTOR_CLASSES = ("WBC", "RBC", "PLT")
CLASS_NAMES = {"WBC": "white cell", "RBC": "red cell", "PLT": "platelet"}
# Names other datasets use for our classes (compared lower-case, '_' and '-' read as spaces).
CLASS_ALIASES = {
    "WBC": {"wbc", "white cell", "white cells", "white blood cell", "white blood cells", "leukocyte",
            "leucocyte", "leukocytes", "leucocytes"},
    "RBC": {"rbc", "red cell", "red cells", "red blood cell", "red blood cells", "erythrocyte", "erythrocytes"},
    "PLT": {"plt", "pc", "platelet", "platelets", "thrombocyte", "thrombocytes"},
}
DEFAULT_ARCHITECTURE = "yolo11n.yaml"


class DatasetError(ValueError):
    """A training or evaluation dataset that cannot be used; the message names the file."""


class DetectorFileError(RuntimeError):
    """Detector weights that are missing or cannot be loaded (the message names the file)."""


def canonical_class(name: str) -> str | None:
    """Our detector class for a dataset's class name (``Platelets`` -> ``PLT``), or None."""
    folded = " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())
    for code, aliases in CLASS_ALIASES.items():
        if folded == code.lower() or folded in aliases:
            return code
    return None


# -- datasets ------------------------------------------------------------------------------
@dataclass
class PreparedDataset:
    """A YOLO dataset in our classes, built from one or more sources."""
    yaml_path: Path
    counts: dict[str, dict[str, int]]  # split -> {"images": n, "skipped_duplicates": n, "skipped_leaks": n}


@dataclass
class _Sample:
    image: Path
    boxes: list[tuple[int, float, float, float, float]]  # class id, cx, cy, w, h (normalised)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _class_map(names, where: Path) -> dict:
    """Source class key (id or name) -> our class id; unknown names are an error naming the file."""
    items = names.items() if isinstance(names, dict) else enumerate(names)
    mapping, unknown = {}, []
    for key, name in items:
        code = canonical_class(name)
        if code is None:
            unknown.append(str(name))
        else:
            mapping[key] = DETECTOR_CLASSES.index(code)
    if unknown:
        raise DatasetError(f"{where}: unknown class name(s) {', '.join(sorted(set(unknown)))}; accepted are "
                           f"{', '.join(sorted(set().union(*CLASS_ALIASES.values())))}")
    return mapping


def _yolo_split_images(spec: dict, root: Path, split: str, where: Path) -> list[Path]:
    entries = spec.get(split)
    if not entries:
        return []
    images = []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix == ".txt" and path.is_file():
            images += [(path.parent / line.strip()).resolve() for line in path.read_text().splitlines()
                       if line.strip()]
        else:
            raise DatasetError(f"{where}: {split} path {path} does not exist")
    return images


def _read_yolo(data_yaml: Path, split: str) -> list[_Sample]:
    try:
        spec = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as error:
        raise DatasetError(f"{data_yaml}: not valid YAML ({error})") from error
    if not isinstance(spec, dict) or "names" not in spec:
        raise DatasetError(f"{data_yaml}: a YOLO data.yaml needs 'names' and 'train'/'val' entries")
    root = Path(spec.get("path") or ".")
    root = root if root.is_absolute() else (data_yaml.parent / root).resolve()
    mapping = _class_map(spec["names"], data_yaml)
    by_index = {int(k) if not isinstance(k, int) else k: v for k, v in mapping.items()}
    samples = []
    for image in _yolo_split_images(spec, root, split, data_yaml):
        parts = list(image.parts)
        if "images" in parts:
            index = len(parts) - 1 - parts[::-1].index("images")
            parts[index] = "labels"
        label = Path(*parts).with_suffix(".txt")
        boxes = []
        if label.is_file():
            for number, line in enumerate(label.read_text().splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    cls, cx, cy, w, h = int(fields[0]), *map(float, fields[1:5])
                except (ValueError, TypeError) as error:
                    raise DatasetError(f"{label}:{number}: not a YOLO box line ({line!r})") from error
                if cls not in by_index:
                    raise DatasetError(f"{label}:{number}: class id {cls} is not in {data_yaml}'s names")
                boxes.append((by_index[cls], cx, cy, w, h))
        samples.append(_Sample(image, boxes))
    return samples


def _read_voc(root: Path, split: str) -> list[_Sample]:
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        return []
    samples = []
    for stem in (line.split()[0] for line in list_file.read_text().splitlines() if line.strip()):
        xml_path = root / "Annotations" / f"{stem}.xml"
        try:
            annotation = ElementTree.parse(xml_path).getroot()
        except (OSError, ElementTree.ParseError) as error:
            raise DatasetError(f"{xml_path}: cannot be read ({error})") from error
        image = next((p for p in (root / "JPEGImages").glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES),
                     None)
        if image is None:
            raise DatasetError(f"{xml_path}: no image {stem}.* in {root / 'JPEGImages'}")
        width, height = _image_size(image)
        boxes = []
        for obj in annotation.iter("object"):
            name = obj.findtext("name", "").strip()
            mapping = _class_map([name], xml_path)
            bndbox = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError) as error:
                raise DatasetError(f"{xml_path}: object {name!r} has no valid bndbox") from error
            x1, x2 = sorted((max(0.0, x1), min(float(width), x2)))
            y1, y2 = sorted((max(0.0, y1), min(float(height), y2)))
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # degenerate boxes (BCCD has a few) carry no object
            boxes.append((mapping[0], (x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                          (x2 - x1) / width, (y2 - y1) / height))
        samples.append(_Sample(image, boxes))
    return samples


def _image_size(image: Path) -> tuple[int, int]:
    """Read from the image itself: some VOC exports write a wrong <size>."""
    from PIL import Image

    with Image.open(image) as opened:
        return opened.size


def _source_kind(path: Path) -> tuple[str, Path]:
    path = Path(path)
    if path.is_file() and path.suffix in {".yaml", ".yml"}:
        return "yolo", path
    if path.is_dir() and (path / "data.yaml").is_file():
        return "yolo", path / "data.yaml"
    if path.is_dir() and (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
        return "voc", path
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    raise DatasetError(f"{path}: neither a YOLO dataset (data.yaml) nor a Pascal VOC folder "
                       "(Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)")


def read_samples(source: Path, split: str) -> list[_Sample]:
    kind, path = _source_kind(source)
    return _read_yolo(path, split) if kind == "yolo" else _read_voc(path, split)


def prepare_dataset(sources: list[Path] | Path, work_dir: Path) -> PreparedDataset:
    """Rewrite YOLO/VOC sources into one YOLO dataset in our classes under ``work_dir``.

    Images are linked, not copied. A training image byte-identical to any validation image is
    left out (public blood-cell sets re-publish each other's fields), as are repeated images,
    so validation figures are not inflated by images the model trained on.
    """
    sources = [Path(s) for s in (sources if isinstance(sources, list | tuple) else [sources])]
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    tags = _source_tags(sources)
    per_split = {split: [(tag, s) for tag, source in zip(tags, sources, strict=True)
                         for s in read_samples(source, split)] for split in ("train", "val")}
    if not per_split["train"] and not per_split["val"]:
        raise DatasetError(f"{', '.join(map(str, sources))}: no train or val images found")
    val_hashes = {_sha256(sample.image) for _, sample in per_split["val"]}
    counts = {}
    for split, samples in per_split.items():
        seen, written, duplicates, leaks = set(), 0, 0, 0
        for tag, sample in samples:
            digest = _sha256(sample.image)
            if digest in seen:
                duplicates += 1
                continue
            if split == "train" and digest in val_hashes:
                leaks += 1
                continue
            seen.add(digest)
            stem = f"{written:06d}_{sample.image.stem}"
            image_dir = work_dir / "images" / split / tag
            label_dir = work_dir / "labels" / split / tag
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            os.symlink(sample.image.resolve(), image_dir / f"{stem}{sample.image.suffix.lower()}")
            (label_dir / f"{stem}.txt").write_text("".join(
                f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cls, cx, cy, w, h in sample.boxes))
            written += 1
        counts[split] = {"images": written, "skipped_duplicates": duplicates, "skipped_leaks": leaks}
    spec = {"path": str(work_dir.resolve()), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(DETECTOR_CLASSES))}
    if not counts["val"]["images"]:
        spec["val"] = spec["train"]
    if not counts["train"]["images"]:
        spec["train"] = spec["val"]
    yaml_path = work_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return PreparedDataset(yaml_path, counts)


def _source_tags(sources: list[Path]) -> list[str]:
    tags = []
    for source in sources:
        base = source.parent.name if source.is_file() else source.name
        tag, n = base or "data", 2
        while tag in tags:
            tag, n = f"{base}{n}", n + 1
        tags.append(tag)
    return tags


# -- training and evaluation -----------------------------------------------------------------
def _ultralytics_offline():
    """Import ultralytics with nothing that could reach the network switched on."""
    apply_offline_environment()
    from ultralytics import settings as yolo_settings

    off = {key: False for key in ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard",
                                  "wandb", "vscode_msg", "openvino_msg") if yolo_settings.get(key)}
    if off:
        yolo_settings.update(off)
    import ultralytics

    return ultralytics


def _load_yolo(model: str | Path):
    """A YOLO model from an ultralytics config name/YAML or a local .pt; never downloads one."""
    ultralytics = _ultralytics_offline()
    text = str(model)
    if text.endswith(".pt") and not Path(text).is_file():
        raise FileNotFoundError(f"{text}: no such weights file (nothing is downloaded; give a local .pt "
                                "or a model config such as yolo11n.yaml to train from scratch)")
    if text.endswith((".yaml", ".yml")) and not Path(text).is_file():
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(text)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{text}: not an ultralytics model config or a YAML file") from error
    return ultralytics.YOLO(text, task="detect")


def _device() -> str:
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainedDetector:
    path: Path  # the weights that ship / were written
    metrics: dict  # per val source: {"overall": {...}, "classes": {code: {...}}}
    dataset: dict  # image counts per split


def train_detector(data: list[Path] | Path, *, model: str | Path = DEFAULT_ARCHITECTURE, epochs: int = 50,
                   hours: float | None = None, imgsz: int = 320, batch: int = 16, workers: int = 2,
                   cache: bool | str = "ram", patience: int = 20, close_mosaic: int = 5, seed: int = 0,
                   out: Path | None = None, work_dir: Path | None = None, verbose: bool = True) -> TrainedDetector:
    """Train a YOLO detector on YOLO/VOC datasets (our classes) and write ``out``/detector.pt + metrics.json.

    ``hours`` bounds the run by time (ultralytics re-plans the epochs after the first one).
    """
    out = Path(out) if out else settings().models_dir / "detector"
    work_dir = Path(work_dir) if work_dir else settings().data_dir / "detector-training"
    prepared = prepare_dataset(data, work_dir / "dataset")
    if not prepared.counts["train"]["images"]:
        raise DatasetError(f"{', '.join(map(str, data if isinstance(data, list) else [data]))}: "
                           "no training images")
    yolo = _load_yolo(model)
    yolo.train(data=str(prepared.yaml_path), epochs=epochs, time=hours, imgsz=imgsz, batch=batch,
               workers=workers, cache=cache, patience=patience, close_mosaic=close_mosaic, seed=seed,
               device=_device(), amp=False, plots=False, project=str(work_dir / "runs"), name="train",
               exist_ok=True, verbose=verbose)
    best = Path(yolo.trainer.best)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "detector.pt"
    shutil.copyfile(best if best.is_file() else yolo.trainer.last, target)
    sources = [Path(s) for s in (data if isinstance(data, list | tuple) else [data])]
    metrics = {tag: evaluate_detector(source, model=target, imgsz=imgsz, work_dir=work_dir / f"eval-{tag}")
               for tag, source in zip(_source_tags(sources), sources, strict=True) if read_samples(source, "val")}
    (out / "metrics.json").write_text(json.dumps(
        {"architecture": str(model), "imgsz": imgsz, "epochs_run": yolo.trainer.epoch + 1,
         "dataset": prepared.counts, "val": metrics, "sha256": _sha256(target)}, indent=2) + "\n")
    return TrainedDetector(target, metrics, prepared.counts)


def evaluate_detector(data: Path, *, model: str | Path | None = None, imgsz: int | None = None,
                      split: str = "val", work_dir: Path | None = None) -> dict:
    """Precision, recall, mAP50 and mAP50-95 per class and overall, from ultralytics' validator.

    ``data`` is a YOLO dataset or VOC folder; it is converted to our classes first.
    """
    work_dir = Path(work_dir) if work_dir else settings().data_dir / "detector-evaluation"
    data = prepare_dataset([Path(data)], work_dir / "dataset").yaml_path
    weights = Path(model) if model else default_detector_path()
    yolo = _load_yolo(weights)
    imgsz = imgsz or int((yolo.ckpt or {}).get("train_args", {}).get("imgsz", 640))
    result = yolo.val(data=str(data), split=split, imgsz=imgsz, batch=8, device=_device(), plots=False,
                      project=str(work_dir / "runs"), name="val", exist_ok=True, verbose=False, workers=0)
    box = result.box
    names = result.names
    classes = {}
    for position, class_index in enumerate(result.ap_class_index):
        p, r, ap50, ap = box.class_result(position)
        classes[names[int(class_index)]] = {"precision": round(float(p), 4), "recall": round(float(r), 4),
                                            "mAP50": round(float(ap50), 4), "mAP50-95": round(float(ap), 4),
                                            "instances": int(result.nt_per_class[int(class_index)])}
    overall = {"precision": round(float(box.mp), 4), "recall": round(float(box.mr), 4),
               "mAP50": round(float(box.map50), 4), "mAP50-95": round(float(box.map), 4)}
    return {"overall": overall, "classes": classes}


def default_detector_path() -> Path:
    folder = settings().models_dir / "detector"
    found = sorted(folder.glob("*.pt"))
    if not found:
        raise DetectorFileError(f"{folder}: no detector weights (*.pt); train one with "
                                "'bloodcells train-detector --data PATH' or 'make models-detector'")
    return found[0]


# -- finding cells -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    x: int
    y: int
    width: int
    height: int


@dataclass
class DetectedBox:
    """One cell found on an image; white cells also carry the tree's answer."""
    file: str
    class_code: str  # WBC, RBC or PLT
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float
    code: str | None = None  # the tree's cell type, white cells only
    path: str | None = None
    sub_confidence: float | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2


def plan_tiles(width: int, height: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles of ``tile_size`` covering the image, neighbours sharing ``overlap`` pixels.

    An image no larger than one tile (in both directions) is one tile.
    """
    if overlap >= tile_size:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile_size}")

    def starts(length: int) -> list[int]:
        if length <= tile_size:
            return [0]
        step = tile_size - overlap
        count = -(-(length - tile_size) // step) + 1
        # spread the tiles evenly so the last one ends exactly at the border
        return [round(i * (length - tile_size) / (count - 1)) for i in range(count)]

    return [Tile(x, y, min(tile_size, width), min(tile_size, height))
            for y in starts(height) for x in starts(width)]


def merge_tiles(per_tile: list[list[DetectedBox]], tiles: list[Tile], width: int, height: int,
                edge: float = 3.0, iou: float = 0.5) -> list[DetectedBox]:
    """Boxes of all tiles (already in image coordinates) with each cell counted once.

    A box touching an inner tile edge is a cell cut by the tile; it is dropped when a box of
    the same class from another tile covers at least half of it and is whole or larger (that
    tile saw more of the cell). Whole cells inside an overlap are found twice; the less confident copy goes.
    """
    import numpy as np

    boxes = [box for tile_boxes in per_tile for box in tile_boxes]
    if not boxes:
        return []
    tile_of = np.array([index for index, tile_boxes in enumerate(per_tile) for _ in tile_boxes])
    xyxy = np.array([box.xyxy for box in boxes], dtype=float)
    classes = np.array([box.class_code for box in boxes])
    confidence = np.array([box.confidence for box in boxes])
    bounds = np.array([(t.x, t.y, t.x + t.width, t.y + t.height) for t in tiles], dtype=float)[tile_of]
    inner = bounds > 0
    inner[:, 2:] = bounds[:, 2:] < (width, height)
    cut = (inner & np.concatenate([xyxy[:, :2] <= bounds[:, :2] + edge, xyxy[:, 2:] >= bounds[:, 2:] - edge],
                                  axis=1)).any(axis=1)
    area = (xyxy[:, 2] - xyxy[:, 0]).clip(0) * (xyxy[:, 3] - xyxy[:, 1]).clip(0)

    def intersection(i: int, others: np.ndarray) -> np.ndarray:
        low = np.maximum(xyxy[others, :2], xyxy[i, :2])
        high = np.minimum(xyxy[others, 2:], xyxy[i, 2:])
        return (high - low).clip(0).prod(axis=1)

    keep = ~cut
    for i in np.flatnonzero(cut):  # vectorised over the other boxes: tiled fields hold thousands
        better = np.flatnonzero((classes == classes[i]) & (tile_of != tile_of[i]) & (~cut | (area > area[i])))
        keep[i] = not (intersection(i, better) >= 0.5 * area[i]).any()
    order = sorted(np.flatnonzero(keep), key=lambda i: (cut[i], -confidence[i]))  # whole, most confident first
    taken = np.zeros(len(boxes), bool)
    for i in order:
        rivals = np.flatnonzero(taken & (classes == classes[i]) & (tile_of != tile_of[i]))
        overlap = intersection(i, rivals)
        if not (overlap / (area[rivals] + area[i] - overlap).clip(1e-9) > iou).any():
            taken[i] = True
    return [boxes[i] for i in np.flatnonzero(taken)]


class Detector:
    """A trained YOLO cell detector; ``find`` tiles large images. Thread-safe."""

    def __init__(self, yolo, path: Path, sha256: str, imgsz: int, tile_size: int | None = None,
                 overlap: int | None = None, conf: float = 0.25, iou: float = 0.6):
        import threading

        self.yolo = yolo
        self.path = path
        self.sha256 = sha256
        self.imgsz = imgsz
        self.classes = {int(i): canonical_class(name) or str(name) for i, name in yolo.names.items()}
        # Tiles as large as the fields the model was trained on (~1.5-2x its input), overlapping
        # by more than the largest cell, so every cell lies whole inside at least one tile.
        self.tile_size = tile_size or 2 * imgsz
        self.overlap = overlap if overlap is not None else self.tile_size // 4
        self.conf = conf
        self.iou = iou
        self.lock = threading.RLock()

    @classmethod
    def load(cls, path: str | Path | None = None, **options) -> Detector:
        """The detector in ``path`` (default: ``models/detector/*.pt``)."""
        path = Path(path) if path else default_detector_path()
        if not path.is_file():
            raise DetectorFileError(f"{path}: detector weights missing")
        try:
            yolo = _load_yolo(path)
        except Exception as error:  # ultralytics raises many kinds for a damaged or foreign file
            raise DetectorFileError(f"{path}: cannot be loaded as a YOLO detector ({error})") from error
        if yolo.task != "detect":
            raise DetectorFileError(f"{path}: a YOLO {yolo.task} model, not a detector")
        imgsz = int((yolo.ckpt or {}).get("train_args", {}).get("imgsz", 640))
        return cls(yolo, path, _sha256(path), imgsz, **options)

    def needs_tiles(self, width: int, height: int) -> bool:
        """Larger than a tile and a quarter: shrinking it to the model input would lose small cells."""
        return max(width, height) > 1.25 * self.tile_size

    def predict(self, images: list, file: str = "") -> list[list[DetectedBox]]:
        """Boxes for each PIL image, one ultralytics call for all of them (no tiling)."""
        if not images:
            return []
        import torch

        with self.lock:
            # ultralytics' device selection sets torch's (process-wide) thread count to cores - 1,
            # which would halve every later CPU inference in this process on a 2-core server.
            threads = torch.get_num_threads()
            try:
                results = self.yolo.predict(images, imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=1000,
                                            device=_device(), verbose=False)
            finally:
                torch.set_num_threads(threads)
        found = []
        for result in results:
            boxes = result.boxes
            found.append([DetectedBox(file, self.classes[int(c)], float(s), *map(float, xyxy))
                          for xyxy, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(),
                                                strict=True)])
        return found

    def find(self, image, file: str = "", batch: int = 16) -> list[DetectedBox]:
        """Every cell on one PIL image; large images are tiled and the tiles merged."""
        width, height = image.size
        if not self.needs_tiles(width, height):
            return self.predict([image], file)[0]
        tiles = plan_tiles(width, height, self.tile_size, self.overlap)
        per_tile = []
        for start in range(0, len(tiles), batch):
            chunk = tiles[start:start + batch]
            crops = [image.crop((t.x, t.y, t.x + t.width, t.y + t.height)) for t in chunk]
            for tile, boxes in zip(chunk, self.predict(crops, file), strict=True):
                per_tile.append([DetectedBox(b.file, b.class_code, b.confidence, b.x1 + tile.x, b.y1 + tile.y,
                                             b.x2 + tile.x, b.y2 + tile.y) for b in boxes])
        return merge_tiles(per_tile, tiles, width, height)


def cell_crop(image, box: DetectedBox, margin: float = 0.35):
    """A square crop centred on the box, framed like single-cell images (PBC's cells span ~60% of
    the image): the classifier tree was trained on those, and tighter crops lose its accuracy."""
    side = max(box.x2 - box.x1, box.y2 - box.y1) * (1 + 2 * margin)
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


# -- counting and storing ----------------------------------------------------------------------
@dataclass
class DetectionResult:
    boxes: list[DetectedBox] = field(default_factory=list)
    problems: list = field(default_factory=list)  # bloodcells.inputs.InputProblem
    analysis_id: int | None = None
    files: list[str] = field(default_factory=list)  # images analysed, in order
    typing_skipped: str | None = None  # why white cells were not typed, if they were not

    def counts(self, file: str | None = None) -> dict[str, int]:
        """Boxes per detector class, for one image or (``file=None``) the whole upload."""
        chosen = [b for b in self.boxes if file is None or b.file == file]
        return {code: sum(b.class_code == code for b in chosen) for code in DETECTOR_CLASSES} | {
            code: n for code, n in Counter(b.class_code for b in chosen).items() if code not in DETECTOR_CLASSES}

    def differential(self, file: str | None = None) -> dict[str, dict[str, float]]:
        """White cells per tree cell type: ``{code: {"count": n, "percent": p}}``, most frequent first."""
        white = [b for b in self.boxes if b.class_code == "WBC" and b.code and (file is None or b.file == file)]
        counts = Counter(b.code for b in white).most_common()
        return {code: {"count": n, "percent": round(100 * n / len(white), 1)} for code, n in counts}

    def summary(self) -> dict:
        """What the store keeps besides the boxes: counts and differentials per image and per upload."""
        return {"counts": self.counts(), "differential": self.differential(), "images": len(self.files),
                "per_image": {f: {"counts": self.counts(f), "differential": self.differential(f)}
                              for f in self.files},
                "typing_skipped": self.typing_skipped, "problems": [str(p) for p in self.problems][:200]}

    def write_csv(self, path: str | Path) -> Path:
        """``file,class,confidence,x1,y1,x2,y2,code,path,sub_confidence``, one row per box."""
        import csv

        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "class", "confidence", "x1", "y1", "x2", "y2", "code", "path",
                             "sub_confidence"])
            for b in self.boxes:
                writer.writerow([b.file, b.class_code, f"{b.confidence:.4f}", *(f"{v:.1f}" for v in b.xyxy),
                                 b.code or "", b.path or "",
                                 "" if b.sub_confidence is None else f"{b.sub_confidence:.4f}"])
        return path


def _default_classifier():
    """The shipped classifier tree, or the reason there is none."""
    from .classify import ModelFileError, load_classifier

    try:
        return load_classifier(), None
    except (ModelFileError, OSError) as error:
        return None, f"no classifier for white cells ({error})"


def detect(source, *, detector: Detector | None = None, classifier=None, store=None, name: str | None = None,
           progress: Callable[[int, int | None], None] | None = None,
           annotate_to: str | Path | None = None) -> DetectionResult:
    """Find, count and (white cells, through the classifier tree) type every cell in ``source``.

    ``source`` is an image, folder, zip or uploaded bytes (read through ``bloodcells.inputs``).
    ``classifier=None`` uses the shipped tree when there is one; ``False`` skips typing. With a
    ``store`` the analysis is recorded whole or marked failed. ``annotate_to`` gets one PNG per image.
    """
    from .inputs import InputError, InputProblem, iter_inputs, open_image
    from .store import DetectionRow

    detector = detector or Detector.load()
    outcome = DetectionResult()
    if classifier is None:
        classifier, outcome.typing_skipped = _default_classifier()
    elif classifier is False:
        classifier, outcome.typing_skipped = None, "white-cell typing switched off"
    label = name or (Path(source).name if isinstance(source, str | Path) else "upload")
    if store is not None:
        versions = {"detector": detector.sha256} | ({f"classifier:{k}": v for k, v in classifier.versions().items()}
                                                     if classifier else {})
        outcome.analysis_id = store.start_analysis(label, "detection", model_versions=versions)
    try:
        for item in iter_inputs(source, name=name):
            if isinstance(item, InputProblem):
                outcome.problems.append(item)
                continue
            try:
                image = open_image(item.content, item.name)
            except InputError as error:
                outcome.problems.append(InputProblem(item.name, str(error).removeprefix(f"{item.name}: ")))
                continue
            boxes = detector.find(image, item.name)
            white = [b for b in boxes if b.class_code == "WBC"]
            if classifier is not None and white:
                for box, cell in zip(white, classifier.classify_images([cell_crop(image, b) for b in white]),
                                     strict=True):
                    box.code, box.path, box.sub_confidence = cell.code, cell.path, cell.confidence
            outcome.boxes += boxes
            outcome.files.append(item.name)
            if annotate_to is not None:
                target = Path(annotate_to) / Path(item.name).with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                annotate(image, boxes).save(target)
            if progress:
                progress(len(outcome.files), None)
        if store is not None:
            store.finish_analysis(outcome.analysis_id, summary=outcome.summary(), detections=[
                DetectionRow(b.file, b.class_code, b.confidence, b.xyxy, b.code, b.path, b.sub_confidence)
                for b in outcome.boxes])
    except BaseException as error:
        if store is not None and outcome.analysis_id is not None:
            store.fail_analysis(outcome.analysis_id, f"{type(error).__name__}: {error}")
        raise
    return outcome


# -- drawing -----------------------------------------------------------------------------------
CLASS_COLOURS = {"WBC": (37, 99, 235), "RBC": (220, 38, 38), "PLT": (22, 163, 74)}
OTHER_COLOUR = (234, 179, 8)


def annotate(image, boxes: list[DetectedBox], classes: list[str] | None = None):
    """A copy of ``image`` with each box drawn in its class colour and labelled (class or cell type)."""
    from PIL import ImageDraw, ImageFont

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.size) / 640
    width = max(1, round(2 * scale))
    font = ImageFont.load_default(size=max(10, round(12 * scale)))
    for box in boxes:
        if classes is not None and box.class_code not in classes:
            continue
        colour = CLASS_COLOURS.get(box.class_code, OTHER_COLOUR)
        draw.rectangle(box.xyxy, outline=colour, width=width)
        text = f"{box.code or box.class_code} {box.sub_confidence if box.code else box.confidence:.2f}"
        left, top, right, bottom = draw.textbbox((box.x1, box.y1), text, font=font)
        offset = bottom - top + 2
        y = box.y1 - offset if box.y1 >= offset else box.y1
        draw.rectangle((left, y, right + 2, y + offset), fill=colour)
        draw.text((box.x1 + 1, y), text, fill=(255, 255, 255), font=font)
    return canvas
