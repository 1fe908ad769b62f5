"""The trained YOLO cell detector: loading its weights and finding cells on a field, tiled when large."""

from __future__ import annotations

import json
import statistics
import threading
from pathlib import Path

from ..settings import settings
from .boxes import DetectedBox, canonical_class
from .tiling import merge_tiles, plan_tiles
from .yolo import load_yolo, torch_device, trained_input_size

DEFAULT_BOX_CONFIDENCE = 0.25  # ultralytics' own default
MAX_BOXES = 1000  # boxes the model gives for one image (ultralytics' max_det)
# Tiles overlap by a quarter of their size, and a cell smaller than the overlap lies whole in some tile
# (``tiling.merge_tiles``). Red cells, most of a count, measure up to ~140 px on the fields the detector
# was trained on (BCCD's 640x480: 99% within 138 px), so a tile needs 4 x 140 px. White cells (~200 px) may
# be cut at any tile size; the merge keeps one view of a cut cell. On 2x2 mosaics of BCCD fields
# (2026-12-06, shipped detector; the fields one by one: 14 white, 275 red cells) tiles of 560 px found
# 13 / 281, 480 px 13 / 298, 320 px 14 / 341, 240 px 29 / 435.
LARGEST_RED_CELL = 140  # pixels
MIN_TILE_SIZE = 4 * LARGEST_RED_CELL
# A camera's photo of one field (12 MP) shows cells far larger than the training fields' (red cells' median
# size: BCCD 102 px, TXL-PBC 81 px): tiles overlapping by 240 px cut a 400 px cell into pieces that no tile
# sees whole, each counted (BCCD field 00014 at 4x: 40 red cells for 22, at 4000x3000 four white cells for
# one). A large image is first looked at whole, at the model's input; when its red cells' median exceeds
# 1.5 x the training scale, the image is shrunk to that scale before it is tiled. A look tells only when
# the cells it sees are of a size the model knows at its input (75 px on a BCCD field): a mosaic of 25 BCCD
# fields (3200x2400) shrinks to 480 px with red cells of 15 px, and the clumps the model then boxes measured
# "1.85x" (shrunk by that, it counted 385 red cells for 558). When the whole image cannot tell, its centre
# (two tiles wide) is looked at: a 2x2 mosaic of fields at 3x (3840x2880) shows its 300 px red cells at 37 px
# whole, and tiled as it was it counted 114 red and 6 white cells for about 106 and 4.
TRAINING_RED_CELL = 100  # pixels
MAGNIFIED = 1.5
MIN_RED_CELLS_MEASURED = 5  # fewer tell no scale: the image is taken at the training scale
MIN_RED_CELL_AT_INPUT = 45  # pixels of the model's input: smaller ones are not measured reliably


def check_tile_size(tile_size: int) -> int:
    """A tile size (pixels of the image) whose overlap between tiles holds a red cell: at least MIN_TILE_SIZE."""
    if tile_size < MIN_TILE_SIZE:
        raise ValueError(f"tile size {tile_size} px is too small: tiles overlap by a quarter of their size, which "
                         f"must hold a red cell (up to ~{LARGEST_RED_CELL} px) whole; give at least "
                         f"{MIN_TILE_SIZE} px")
    return tile_size


class DetectorFileError(RuntimeError):
    """Detector weights that are missing or cannot be loaded (the message names the file)."""


def default_detector_path() -> Path:
    """The shipped weights: the first ``*.pt`` in ``models/detector``."""
    folder = settings().models_dir / "detector"
    found = sorted(folder.glob("*.pt"))
    if not found:
        raise DetectorFileError(f"{folder}: no detector weights (*.pt); train one with "
                                "'bloodcells train-detector --data PATH --out "
                                f"{folder}' or 'make models-detector'")
    return found[0]


class FoundBoxes(list):
    """The boxes found on one image, and whether a call of the model on it (the image, or one of its tiles)
    gave the most it gives (MAX_BOXES): cells beyond them were not counted. Counting the boxes after the
    tiles are merged cannot tell (a tiled scan of 225 fields holds 5,459 real cells)."""
    capped: bool = False

    @classmethod
    def of(cls, boxes, capped: bool) -> FoundBoxes:
        found = cls(boxes)
        found.capped = capped
        return found


def weights_record(path: Path) -> dict:
    """What training recorded of the weights in ``path``: the ``metrics.json`` beside them when it names them
    (those written before it named one describe detector.pt), else {}. OSError, ValueError when unreadable."""
    record = path.with_name("metrics.json")
    if not record.is_file():
        return {}
    described = json.loads(record.read_text())
    return described if described.get("weights", "detector.pt") == path.name else {}


def _check_recorded_sha256(path: Path, sha256: str) -> None:
    """Refuse weights whose sha256 is not the one training recorded beside them (``metrics.json``, which names
    the file it describes): 4 KB overwritten inside the shipped detector loaded, found no cell on any field, and
    said nothing. Weights no record describes (a detector of the lab's own) are not checked."""
    record = path.with_name("metrics.json")
    try:
        recorded = weights_record(path).get("sha256")
    except (OSError, ValueError, AttributeError) as error:
        raise DetectorFileError(f"{record}: unreadable ({error}); it records the sha256 of the weights beside "
                                "it") from error
    if recorded is not None and recorded != sha256:
        raise DetectorFileError(f"{path}: damaged or replaced (its sha256 is {sha256[:12]}..., {record.name} beside it "
                                f"records {str(recorded)[:12]}...): restore it (`git checkout {path.name}` in its "
                                "folder for the shipped one) or train it again")


class Detector:
    """A trained YOLO cell detector; ``find`` tiles large images. Thread-safe: one instance serves
    every caller, each with its own minimum box confidence."""

    def __init__(self, yolo, path: Path, sha256: str, imgsz: int, tile_size: int | None = None,
                 overlap: int | None = None, iou: float = 0.6):
        self.yolo = yolo
        self.path = path
        self.sha256 = sha256
        self.imgsz = imgsz
        self.classes = {int(i): canonical_class(name) or str(name) for i, name in yolo.names.items()}
        # Tiles as large as the fields the model was trained on (~1.5-2x its input), overlapping
        # by more than a cell, so every cell lies whole inside at least one tile.
        self.tile_size = 2 * imgsz if tile_size is None else check_tile_size(tile_size)
        self.overlap = overlap if overlap is not None else self.tile_size // 4
        self.iou = iou
        # Every field is resized to the model's input. One magnified more than twice shows cells larger
        # than any the model learned, and it finds white cells that are not there (random crops of BCCD
        # fields, shipped detector: 10-12 white cells invented in 20 crops of 64-160 px, 0-2 from 240 px up).
        self.min_field_side = imgsz // 2
        # ultralytics keeps one predictor per model and sets each call's options (conf among them) on
        # it: calls must not overlap
        self.lock = threading.RLock()

    @classmethod
    def load(cls, path: str | Path | None = None, **options) -> Detector:
        """The detector in ``path`` (default: ``models/detector/*.pt``)."""
        from ..store import sha256_file

        path = Path(path) if path else default_detector_path()
        if not path.is_file():
            raise DetectorFileError(f"{path}: detector weights missing")
        sha256 = sha256_file(path)
        _check_recorded_sha256(path, sha256)  # first: ultralytics' own words for a damaged file say to download one
        try:
            yolo = load_yolo(path)
        except Exception as error:  # ultralytics raises many kinds for a damaged or foreign file
            raise DetectorFileError(f"{path}: cannot be loaded as a YOLO detector ({error})") from error
        if yolo.task != "detect":
            raise DetectorFileError(f"{path}: a YOLO {yolo.task} model, not a detector")
        return cls(yolo, path, sha256, trained_input_size(yolo), **options)

    def needs_tiles(self, width: int, height: int) -> bool:
        """Larger than a tile and a quarter: shrinking it to the model input would lose small cells."""
        return max(width, height) > 1.25 * self.tile_size

    def predict(self, images: list, file: str = "", *,
                confidence: float = DEFAULT_BOX_CONFIDENCE) -> list[list[DetectedBox]]:
        """Boxes of at least ``confidence`` for each PIL image, one ultralytics call for all of them
        (no tiling)."""
        if not images:
            return []
        import torch

        with self.lock:
            # ultralytics' device selection sets torch's (process-wide) thread count to cores - 1,
            # which would halve every later CPU inference in this process on a 2-core server.
            threads = torch.get_num_threads()
            try:
                results = self.yolo.predict(images, imgsz=self.imgsz, conf=confidence, iou=self.iou, max_det=MAX_BOXES,
                                            device=torch_device(), verbose=False)
            finally:
                torch.set_num_threads(threads)
        found = []
        for result in results:
            boxes = result.boxes
            found.append(FoundBoxes.of([DetectedBox(file, self.classes[int(c)], float(s), *map(float, xyxy))
                                        for xyxy, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(),
                                                              boxes.cls.tolist(), strict=True)],
                                       capped=len(boxes) >= MAX_BOXES))
        return found

    def find(self, image, file: str = "", *, confidence: float = DEFAULT_BOX_CONFIDENCE,
             batch: int = 16) -> list[DetectedBox]:
        """Every cell found with at least ``confidence`` on one PIL image; large images are tiled and
        the tiles merged, after shrinking one whose cells are magnified beyond the training scale."""
        width, height = image.size
        if not self.needs_tiles(width, height):
            return self.predict([image], file, confidence=confidence)[0]
        magnification = self.magnification(image)
        if magnification <= MAGNIFIED:
            return self._tiled(image, file, confidence, batch)
        from PIL import Image

        shrunk = image.resize((round(width / magnification), round(height / magnification)), Image.Resampling.LANCZOS)
        found = (self._tiled(shrunk, file, confidence, batch) if self.needs_tiles(*shrunk.size)
                 else self.predict([shrunk], file, confidence=confidence)[0])
        x_scale, y_scale = width / shrunk.width, height / shrunk.height
        return FoundBoxes.of([DetectedBox(b.file, b.class_code, b.confidence, b.x1 * x_scale, b.y1 * y_scale,
                                          b.x2 * x_scale, b.y2 * y_scale) for b in found], capped=found.capped)

    def magnification(self, image) -> float:
        """How much larger than on the training fields the red cells of ``image`` are (their median
        size, seen at the model's input in the whole image, else in its centre two tiles wide), or 1.0
        when neither look can tell: too few red cells, or too small at the model's input to be measured."""
        width, height = image.size
        side = 2 * self.tile_size
        views = [image]
        if max(width, height) > side:
            left, top = max(0, (width - side) // 2), max(0, (height - side) // 2)
            views.append(image.crop((left, top, min(width, left + side), min(height, top + side))))
        for view in views:
            reds = [((b.x2 - b.x1) * (b.y2 - b.y1)) ** 0.5 for b in self.predict([view])[0] if b.class_code == "RBC"]
            if len(reds) >= MIN_RED_CELLS_MEASURED:
                median = statistics.median(reds)
                if median * self.imgsz / max(view.size) >= MIN_RED_CELL_AT_INPUT:
                    return median / TRAINING_RED_CELL
        return 1.0

    def _tiled(self, image, file: str, confidence: float, batch: int) -> list[DetectedBox]:
        width, height = image.size
        tiles = plan_tiles(width, height, self.tile_size, self.overlap)
        per_tile, capped = [], False
        for start in range(0, len(tiles), batch):
            chunk = tiles[start:start + batch]
            crops = [image.crop((t.x, t.y, t.x + t.width, t.y + t.height)) for t in chunk]
            for tile, boxes in zip(chunk, self.predict(crops, file, confidence=confidence), strict=True):
                capped |= boxes.capped
                per_tile.append([DetectedBox(b.file, b.class_code, b.confidence, b.x1 + tile.x, b.y1 + tile.y,
                                             b.x2 + tile.x, b.y2 + tile.y) for b in boxes])
        return FoundBoxes.of(merge_tiles(per_tile, tiles, width, height), capped)

