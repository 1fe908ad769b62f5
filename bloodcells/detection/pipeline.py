"""Finding, counting and typing every cell of an upload, and storing the analysis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..inputs import MIN_IMAGE_SIDE
from .boxes import DETECTOR_CLASSES, DetectedBox
from .detector import DEFAULT_BOX_CONFIDENCE, MAX_BOXES, Detector
from .drawing import annotate
from .slide import DEFAULT_WBC_TARGET, FieldImage, SlideCount, check_wbc_target, count_slide, taken_white_cells

if TYPE_CHECKING:
    from ..classify import TreeClassifier
    from ..store import Store


@dataclass
class DetectionResult:
    boxes: list[DetectedBox] = field(default_factory=list)
    problems: list = field(default_factory=list)  # bloodcells.inputs.InputProblem
    analysis_id: int | None = None
    files: list[str] = field(default_factory=list)  # images analysed, in order
    typing_skipped: str | None = None  # why white cells were not typed, if they were not
    slide: SlideCount | None = None  # slide mode: the fields as one slide (``boxes`` then hold each cell once)
    warnings: list[str] = field(default_factory=list)  # images counted, whose counts are not to be trusted: why
    annotated: dict[str, str] = field(default_factory=dict)  # a drawing's path in ``annotate_to`` -> its image

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
        from ..inputs import STORED_PROBLEMS, stored_problems

        summary = {"counts": self.counts(), "differential": self.differential(), "images": len(self.files),
                   "per_image": {f: {"counts": self.counts(f), "differential": self.differential(f)}
                                 for f in self.files},
                   "typing_skipped": self.typing_skipped, **stored_problems(self.problems),
                   "warnings": self.warnings[:STORED_PROBLEMS]}
        if self.slide is not None:
            summary["slide"] = self.slide.as_dict()
        return summary

    def write_csv(self, path: str | Path) -> Path:
        """``file,class,confidence,x1,y1,x2,y2,code,path,sub_confidence``, one row per box, as the
        app's downloads (``spreadsheet``: UTF-8 with a byte-order mark, formulas written as text)."""
        from ..spreadsheet import write_csv

        return write_csv(path, ["file", "class", "confidence", "x1", "y1", "x2", "y2", "code", "path", "sub_confidence"],
                         ([b.file, b.class_code, f"{b.confidence:.4f}", *(f"{v:.1f}" for v in b.xyxy), b.code or "",
                           b.path or "", "" if b.sub_confidence is None else f"{b.sub_confidence:.4f}"]
                          for b in self.boxes))


def cell_crop(image, box: DetectedBox, margin: float = 0.35):
    """A square crop centred on the box, framed like single-cell images (PBC's cells span ~60% of
    the image): the classifier tree was trained on those, and tighter crops lose its accuracy. Cut by
    the field's edge, it keeps the part inside; it is never under MIN_IMAGE_SIDE a side (a field is not),
    since the crop is stored as the cell's image and read back like any image: a box of 10 px in a
    corner gave a 14 px crop that no report could show."""
    side = max(box.x2 - box.x1, box.y2 - box.y1) * (1 + 2 * margin)
    left, right = _crop_span((box.x1 + box.x2) / 2, side, image.width)
    top, bottom = _crop_span((box.y1 + box.y2) / 2, side, image.height)
    return image.crop((left, top, right, bottom))


def _crop_span(centre: float, side: float, limit: int) -> tuple[int, int]:
    """The pixels ``side`` long around ``centre`` within ``0..limit``, widened to MIN_IMAGE_SIDE (or the
    whole ``limit``, if shorter) on whichever side has room."""
    low, high = max(0, round(centre - side / 2)), min(limit, round(centre + side / 2))
    least = min(MIN_IMAGE_SIDE, limit)
    if (shortfall := least - (high - low)) > 0:
        low = max(0, low - (shortfall + 1) // 2)
        high = min(limit, low + least)
        low = high - least
    return low, high


def _default_classifier() -> tuple[TreeClassifier | None, str | None]:
    """The shipped classifier tree, or the reason there is none."""
    from ..classify import ModelFileError, load_classifier

    try:
        return load_classifier(), None
    except (ModelFileError, OSError) as error:
        return None, f"no classifier for white cells ({error})"


def detect(source, *, detector: Detector | None = None, classifier: TreeClassifier | None = None,
           type_white_cells: bool = True, confidence: float = DEFAULT_BOX_CONFIDENCE, store: Store | None = None,
           name: str | None = None, progress: Callable[[int, int | None], None] | None = None,
           annotate_to: str | Path | None = None, slide: bool = False,
           wbc_target: int = DEFAULT_WBC_TARGET) -> DetectionResult:
    """Find, count and (white cells, through the classifier tree) type every cell in ``source``.

    ``source`` is an image, folder, zip or uploaded bytes (read through ``bloodcells.inputs``).
    Boxes the detector is less sure of than ``confidence`` are left out. White cells are typed by
    ``classifier``, by default the shipped tree when there is one; ``type_white_cells=False`` skips
    typing. With a ``store`` the analysis is recorded whole or marked failed. ``annotate_to`` gets
    one PNG per image, with the boxes kept.

    ``slide=True`` reads the images as fields of one slide (``bloodcells.detection.slide``): fields
    that overlap are registered and each cell is counted once (``boxes`` keeps one box per cell, on
    the field it is counted on), and ``slide`` holds the slide's count with the white-cell
    differential over the fields until ``wbc_target`` white cells.
    """
    from ..classify import TREE_VERSION
    from ..inputs import (
        InputError,
        InputProblem,
        RepeatedImages,
        blank_image,
        check_source,
        is_image_name,
        iter_inputs,
        later_pages,
        none_readable,
        open_image,
        png_bytes,
    )
    from ..store import DetectionRow, PredictionRow, record_analysis

    if slide:
        check_wbc_target(wbc_target)
    check_source(source)
    detector = detector or Detector.load()
    outcome = DetectionResult()
    fields: list[FieldImage] = []  # slide mode: what registering the fields needs of each
    repeated = RepeatedImages()
    # each typed white cell (by its box): the tree's answer and its crop, to store those the differential counts
    # as cells of the analysis, flagged for review like classified cells (encoded only when stored)
    cells: dict[int, tuple] = {}
    if not type_white_cells:
        classifier, outcome.typing_skipped = None, "white-cell typing switched off"
    elif classifier is None:
        classifier, outcome.typing_skipped = _default_classifier()
    label = name or (Path(source).name if isinstance(source, str | Path) else "upload")
    versions = {"detector": detector.sha256} | ({TREE_VERSION: classifier.tree_version}
                                                 | {f"classifier:{k}": v for k, v in classifier.versions().items()}
                                                 if classifier is not None else {})
    with record_analysis(store, label, "detection", versions) as run:
        outcome.analysis_id = run.id
        for item in iter_inputs(source, name=name):
            if isinstance(item, InputProblem):
                outcome.problems.append(item)
                continue
            if slide:
                _check_one_slide(fields, item.name)
            try:
                image = open_image(item.content, item.name)
            except InputError as error:
                outcome.problems.append(InputProblem(item.name, str(error).removeprefix(f"{item.name}: ")))
                continue
            if max(image.size) < detector.min_field_side:
                outcome.problems.append(InputProblem(item.name, f"{image.width}x{image.height} pixels is too small "
                                                     f"for a smear field (at least {detector.min_field_side} pixels "
                                                     "on the longer side: the detector magnifies a smaller one so "
                                                     "much that it finds cells that are not there)"))
                continue
            if blank := blank_image(image, item.name):  # counted as a field of 0 cells, it lowered a slide's means
                outcome.problems.append(blank)
                continue
            repeated.add(item)
            if pages := later_pages(image, item.name):
                outcome.problems.append(pages)
            boxes = detector.find(image, item.name, confidence=confidence)
            outcome.warnings += _doubtful(item.name, image, boxes)
            white = [b for b in boxes if b.class_code == "WBC"]
            if classifier is not None and white:
                crops = [cell_crop(image, b) for b in white]
                for box, crop, cell in zip(white, crops, classifier.classify_images(crops), strict=True):
                    box.code, box.path, box.sub_confidence = cell.code, cell.path, cell.confidence
                    cells[id(box)] = cell, crop
            outcome.boxes += boxes
            outcome.files.append(item.name)
            if slide:
                fields.append(FieldImage.of(item.name, image))
            elif annotate_to is not None:
                _save_annotated(Path(annotate_to), item.name, image, boxes, outcome.annotated)
            if progress:
                progress(len(outcome.files), None)
        if not outcome.files:  # images, none decodable: an error, not a finished analysis of 0 cells
            raise none_readable(label, [p for p in outcome.problems if is_image_name(p.name)])
        outcome.warnings += filter(None, [repeated.warning(slide=slide)])
        if confidence < DOUBTFUL_CONFIDENCE:
            outcome.warnings.insert(0, low_confidence_warning(confidence))
        counted = outcome.boxes
        if slide:
            outcome.slide, outcome.boxes = count_slide(fields, outcome.boxes, wbc_target)
            counted = taken_white_cells(outcome.files, outcome.boxes, wbc_target)[0]
            if annotate_to is not None:  # drawn once the boxes kept are known (fewer than found)
                _annotate_again(source, name, outcome.files, outcome.boxes, Path(annotate_to), outcome.annotated)
        run.summary = outcome.summary()
        run.predictions = (PredictionRow(box.cell_name, cell.code, cell.path,
                                         cell.confidence, cell.level_confidences, cell.needs_review, png_bytes(crop))
                           for box in counted if id(box) in cells for cell, crop in [cells[id(box)]])
        run.detections = (DetectionRow(b.file, b.class_code, b.confidence, b.xyxy, b.code, b.path, b.sub_confidence)
                          for b in outcome.boxes)
    return outcome


# Below it the counts swell with boxes the detector doubts: 30 TXL-PBC val fields (472 red cells and 27
# platelets labelled) gave 535 and 30 at the default 0.25, 583 and 34 at 0.1, 615 and 42 at 0.05, 2198 and 328
# at 0.001 (and 62 white cells for 33).
DOUBTFUL_CONFIDENCE = 0.1


def low_confidence_warning(confidence: float) -> str:
    return (f"a minimum box confidence of {confidence:.3f} counts boxes the detector doubts (specks, parts of cells): "
            f"on 30 labelled fields, 0.05 counted 42 platelets and 615 red cells for 27 and 472 (30 and 535 at the "
            f"default {DEFAULT_BOX_CONFIDENCE}); counts below {DOUBTFUL_CONFIDENCE} are not to be trusted")


def _check_one_slide(fields: list[FieldImage], name: str) -> None:
    """Slide mode counts the fields of one slide: a zip of two slides' folders was counted as one slide, two
    patients' white cells in one differential, with no word said."""
    from ..inputs import InputError

    def said(folder: PurePosixPath) -> str:
        return "the top of the upload" if folder == PurePosixPath(".") else f"{folder.as_posix()}/"

    folder = PurePosixPath(name).parent
    if fields and (first := PurePosixPath(fields[0].file).parent) != folder:
        raise InputError(f"slide mode counts the fields of one slide, and this upload holds fields in more than one "
                         f"folder ({said(first)}, {said(folder)}): detect each slide on its own, or turn slide mode "
                         "off to count the images as fields apart")


def _doubtful(name: str, image, boxes: list[DetectedBox]) -> list[str]:
    """Why the count of one image is not to be trusted, in words (none: it is). A minimum box confidence
    of 0 filled a field with 1000 boxes (174 "white cells") in silence, a greyscale field gave 17 red cells
    and 1 platelet where its colour original gives 22 and 4, and the same field as a GIF 21 and 1 (13
    and 0 dithered to the web palette). A tiled scan of 225 fields (5,459 real cells) was told to raise
    the confidence: what counts is whether a call of the model gave its most (``FoundBoxes.capped``)."""
    import numpy as np

    said = []
    if getattr(boxes, "capped", False):
        said.append(f"{name}: the detector gave the most boxes it gives ({MAX_BOXES}) for the image or one of its "
                    "tiles: cells beyond them were not counted")
    pixels = np.asarray(image.resize((64, 64))).astype(int)  # open_image gives RGB
    if np.ptp(pixels, axis=2).max() <= 2:  # the three channels alike everywhere
        said.append(f"{name}: a greyscale image: the detector learnt stained colour fields, and finds fewer red "
                    "cells and platelets on it; use the colour original")
    elif image.info.get("palette"):
        said.append(f"{name}: a palette image (a GIF or an 8-bit PNG) of at most 256 colours: the detector finds "
                    "fewer red cells and platelets on it; use the camera's original (JPEG, PNG or TIFF)")
    return said


def _save_annotated(folder: Path, file: str, image, boxes: list[DetectedBox], written: dict[str, str]) -> None:
    """``folder/<image>.png`` (see ``inputs.disk_path``): the image drawn with its boxes. Two images whose
    paths there would be one (``x.jpg`` beside ``x.jpg.png``; two long names shortened alike) are drawn
    under ``x.jpg (2).png``...: the second overwrote the first. ``written``: path -> image, of this run."""
    from ..inputs import disk_path

    target, copy = str(disk_path(file, ".png")), 2
    while target in written:
        target, copy = str(disk_path(f"{file} ({copy})", ".png")), copy + 1
    written[target] = file
    (folder / target).parent.mkdir(parents=True, exist_ok=True)
    annotate(image, boxes).save(folder / target)


def _annotate_again(source, name: str | None, files: list[str], boxes: list[DetectedBox], folder: Path,
                    written: dict[str, str]) -> None:
    """Each of ``files`` (the images of ``source`` analysed), read a second time, drawn with its ``boxes``
    (slide mode: the boxes kept are known only once every field is read, and holding every field's image
    would grow with the slide)."""
    from ..inputs import InputImage, iter_inputs, open_image

    by_file: dict[str, list[DetectedBox]] = {file: [] for file in files}
    for box in boxes:
        by_file[box.file].append(box)
    for item in iter_inputs(source, name=name):
        if isinstance(item, InputImage) and item.name in by_file:
            _save_annotated(folder, item.name, open_image(item.content, item.name), by_file[item.name], written)
