"""Slide mode: many fields of one smear give one count.

Fields that overlap (tiles of one scan, or photographs taken a little apart) are registered onto
each other by phase correlation, placed on the slide, and their boxes merged like the tiles of one
large image, so a cell seen in two fields counts once. The slide's counts follow from the cells
counted once and each field's own counts: the white-cell differential over the fields in upload
order until a target number of white cells, red cells and platelets per field, platelets to red cells.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .boxes import DETECTOR_CLASSES, DetectedBox
from .tiling import Tile, merge_tiles

if TYPE_CHECKING:
    import numpy as np

DEFAULT_WBC_TARGET = 100
REGISTRATION_SIDE = 2048  # fields are compared at most this large (longest side, pixels)
# The search over every pair of fields runs on small copies, at a second size for the pairs the first misses.
# Pairs of overlapping crops of BCCD fields, re-compressed and brightened apart, found at 128 / 192 / both:
# 79 / 80 / 80 of 80; with noise added as well 188 / 186 / 190 of 200 (the misses share 11-18% of a field).
COARSE_SIDES = (128, 192)
HIGH_PASS_SIGMA = 2.0  # pixels of the small copies: shading and stain background left out of the search
MIN_OVERLAP = 0.10  # of the smaller field: a narrower strip holds too few cells to prove two fields meet
MIN_AGREEMENT = 0.9  # normalized correlation of the shared pixels at which two fields show the same place
COARSE_AGREEMENT = 0.3  # a candidate below this on the small, high-passed copies is not worth refining


def check_wbc_target(target: int) -> int:
    """The number of white cells the differential counts to: a positive whole number (100 or 200 usually)."""
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValueError(f"white-cell target {target!r}: give a positive number of white cells, e.g. 100 or 200")
    return target


@dataclass
class FieldImage:
    """What registration keeps of one field: its size and a grayscale copy no larger than REGISTRATION_SIDE."""
    file: str
    width: int
    height: int
    gray: np.ndarray  # uint8

    @classmethod
    def of(cls, file: str, image) -> FieldImage:
        import numpy as np
        from PIL import Image

        gray = image.convert("L")
        scale = min(1.0, REGISTRATION_SIDE / max(image.size))
        if scale < 1:
            gray = gray.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                               Image.Resampling.BOX)
        return cls(file, image.width, image.height, np.asarray(gray, dtype=np.uint8))

    @property
    def scale(self) -> float:
        return self.gray.shape[1] / self.width


@dataclass(frozen=True)
class FieldOverlap:
    """Two fields that show the same part of the slide."""
    first: str
    second: str
    dx: float  # where the second field's top-left corner lies in the first field's pixels
    dy: float
    overlap: float  # the shared area, as a fraction of the smaller field
    agreement: float  # normalized correlation of the shared pixels (1: identical)


@dataclass
class _Prepared:
    """A field at the common registration scale (``fine``) and high-passed at each of COARSE_SIDES."""
    file: str
    fine: np.ndarray  # uint8, as FieldImage.gray
    coarse: list[np.ndarray]  # float32


def register_fields(fields: list[FieldImage]) -> list[FieldOverlap]:
    """Every pair of fields that overlap, with the offset between them.

    Each pair is searched on small high-passed copies (phase correlation, both zero-padded so that
    any offset leaving them overlapping is found without wrap-around), refined on the overlapping
    strips at registration scale, and accepted only when the strip covers ``MIN_OVERLAP`` of the
    smaller field and its pixels agree (``MIN_AGREEMENT``): unrelated fields of a smear look
    alike (round cells on a pale background), so a correlation peak alone proves nothing.
    """
    import cv2

    if len(fields) < 2:
        return []
    scale = min(f.scale for f in fields)  # one pixel size for all: fields of another size are brought to it
    fine = [_resized(f.gray, scale / f.scale) for f in fields]
    longest = max(max(g.shape) for g in fine)
    coarse_scales = [min(1.0, side / longest) for side in COARSE_SIDES]

    def high_passed(gray: np.ndarray, factor: float) -> np.ndarray:
        small = _resized(gray, factor).astype("float32")
        return small - cv2.GaussianBlur(small, (0, 0), HIGH_PASS_SIGMA)

    prepared = [_Prepared(f.file, g, [high_passed(g, c) for c in coarse_scales])
                for f, g in zip(fields, fine, strict=True)]
    found = []
    for i, first in enumerate(prepared):
        for second in prepared[i + 1:]:
            match = _match(first, second, coarse_scales)
            if match is not None:
                (dx, dy), overlap, agreement = match
                # (+ 0.0 turns a rounded -0.0 into 0.0)
                found.append(FieldOverlap(first.file, second.file, round(dx / scale, 1) + 0.0,
                                          round(dy / scale, 1) + 0.0, round(overlap, 3), round(agreement, 4)))
    return found


def _resized(gray: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    if abs(factor - 1) < 1e-9:
        return gray
    size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def _match(first: _Prepared, second: _Prepared, coarse_scales: list[float]):
    """``((dx, dy), overlap, agreement)`` at registration scale for the best accepted offset, or None."""
    import cv2

    for a, b, coarse_scale in zip(first.coarse, second.coarse, coarse_scales, strict=True):
        height, width = a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]
        shift, _ = cv2.phaseCorrelate(_padded(a, height, width), _padded(b, height, width))
        # phaseCorrelate reports how far the first image moves onto the second: the second field's corner lies
        # at minus that. The answer is modulo the padded size; of its wrapped variants, those that overlap count.
        best = None
        for dx in (-shift[0], -shift[0] - width, -shift[0] + width):
            for dy in (-shift[1], -shift[1] - height, -shift[1] + height):
                coarse = _agreement(a, b, round(dx), round(dy))
                if coarse is None or coarse[0] < 0.8 * MIN_OVERLAP or coarse[1] < COARSE_AGREEMENT:
                    continue
                offset = _refine(first.fine, second.fine, dx / coarse_scale, dy / coarse_scale)
                checked = _agreement(first.fine, second.fine, round(offset[0]), round(offset[1]))
                if checked and checked[0] >= MIN_OVERLAP and checked[1] >= MIN_AGREEMENT and (
                        best is None or checked[1] > best[2]):
                    best = (offset, *checked)
        if best is not None:
            return best
    return None


def _padded(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import numpy as np

    canvas = np.zeros((height, width), np.float32)
    canvas[:image.shape[0], :image.shape[1]] = image
    return canvas


def _strips(a: np.ndarray, b: np.ndarray, dx: int, dy: int):
    """The parts of ``a`` and ``b`` that show the same place when ``b``'s corner lies at (dx, dy) in ``a``."""
    left, top = max(0, dx), max(0, dy)
    right, bottom = min(a.shape[1], dx + b.shape[1]), min(a.shape[0], dy + b.shape[0])
    if right <= left or bottom <= top:
        return None
    return a[top:bottom, left:right], b[top - dy:bottom - dy, left - dx:right - dx]


def _centred(pixels: np.ndarray) -> np.ndarray:
    """The pixels as float32 less their mean (contiguous, as phaseCorrelate needs)."""
    centred = pixels.astype("float32")
    centred -= centred.mean()
    return centred


def _agreement(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> tuple[float, float] | None:
    """(shared area over the smaller field's, normalized correlation of the shared pixels), or None when
    they do not overlap or the shared strip is flat (nothing in it to compare)."""
    strips = _strips(a, b, dx, dy)
    if strips is None:
        return None
    first, second = map(_centred, strips)
    spread = math.sqrt(float((first * first).sum()) * float((second * second).sum()))
    if spread < 1e-6 * first.size:
        return None
    return first.size / min(a.size, b.size), float((first * second).sum()) / spread


def _refine(a: np.ndarray, b: np.ndarray, dx: float, dy: float) -> tuple[float, float]:
    """The offset found on the small copies, corrected by phase correlation of the shared strips at full scale."""
    import cv2

    strips = _strips(a, b, round(dx), round(dy))
    if strips is None or min(strips[0].shape) < 8:
        return dx, dy
    first, second = map(_centred, strips)
    window = cv2.createHanningWindow(first.shape[::-1], cv2.CV_32F)
    (rx, ry), _ = cv2.phaseCorrelate(first, second, window)
    return round(dx) - rx, round(dy) - ry


@dataclass(frozen=True)
class SlidePosition:
    group: int  # fields of one group overlap, directly or through others; groups never share cells
    x: int  # the field's top-left corner in its group's coordinates (the group's first field at 0, 0)
    y: int


def place_fields(files: list[str], overlaps: list[FieldOverlap]) -> dict[str, SlidePosition]:
    """Each field's group and position, chaining the pairwise offsets outward from each group's first field."""
    neighbours: dict[str, list[tuple[str, float, float]]] = {file: [] for file in files}
    for o in overlaps:
        neighbours[o.first].append((o.second, o.dx, o.dy))
        neighbours[o.second].append((o.first, -o.dx, -o.dy))
    placed: dict[str, tuple[int, float, float]] = {}
    group = -1
    for root in files:
        if root in placed:
            continue
        group += 1
        placed[root] = (group, 0.0, 0.0)
        queue = deque([root])
        while queue:
            file = queue.popleft()
            _, x, y = placed[file]
            for other, dx, dy in neighbours[file]:
                if other not in placed:
                    placed[other] = (group, x + dx, y + dy)
                    queue.append(other)
    return {file: SlidePosition(group, round(x), round(y)) for file, (group, x, y) in placed.items()}


def count_once(fields: list[FieldImage], positions: dict[str, SlidePosition],
               boxes: list[DetectedBox]) -> list[DetectedBox]:
    """The boxes left when each group's fields are merged like tiles of one image: a cell seen by two
    fields counts once. The boxes kept are the given ones (their own field, its pixel coordinates)."""
    by_file: dict[str, list[DetectedBox]] = {f.file: [] for f in fields}
    for box in boxes:
        by_file[box.file].append(box)
    kept: set[int] = set()
    for group in sorted({p.group for p in positions.values()}):
        members = [f for f in fields if positions[f.file].group == group]
        if len(members) == 1:
            kept.update(id(box) for box in by_file[members[0].file])
            continue
        left = min(positions[f.file].x for f in members)
        top = min(positions[f.file].y for f in members)
        tiles = [Tile(positions[f.file].x - left, positions[f.file].y - top, f.width, f.height) for f in members]
        original: dict[int, DetectedBox] = {}
        per_tile = []
        for field, tile in zip(members, tiles, strict=True):
            shifted = []
            for box in by_file[field.file]:
                moved = dataclasses.replace(box, x1=box.x1 + tile.x, y1=box.y1 + tile.y, x2=box.x2 + tile.x,
                                            y2=box.y2 + tile.y)
                original[id(moved)] = box
                shifted.append(moved)
            per_tile.append(shifted)
        width = max(t.x + t.width for t in tiles)
        height = max(t.y + t.height for t in tiles)
        kept.update(id(original[id(box)]) for box in merge_tiles(per_tile, tiles, width, height))
    return [box for box in boxes if id(box) in kept]


@dataclass(frozen=True)
class Spread:
    """A count per field over the slide's fields; ``sd`` is the sample standard deviation (None for one field)."""
    mean: float
    sd: float | None
    low: int
    high: int

    @classmethod
    def of(cls, values: list[int]) -> Spread:
        if not values:  # no readable field
            return cls(0.0, None, 0, 0)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
                   min(values), max(values))

    def __str__(self) -> str:
        sd = "" if self.sd is None else f" ± {self.sd:.1f}"
        return f"{self.mean:.1f}{sd} (range {self.low}-{self.high})"


@dataclass(frozen=True)
class SlideField:
    file: str
    group: int
    x: int
    y: int
    found: dict[str, int]  # every box the detector found on this field
    counted: dict[str, int]  # the cells counted on this field: those not already counted on an overlapping one


@dataclass(frozen=True)
class WhiteCellCount:
    """The white-cell differential over the fields in upload order, until ``target`` white cells."""
    target: int
    counted: int  # cells of the differential (those kept apart, e.g. not identifiable, not among them)
    fields_used: int
    differential: dict[str, dict[str, float]]  # tree cell type -> {"count", "percent"} of the typed cells taken
    untyped: int  # white cells counted towards the target without a type (typing off or unavailable)

    @property
    def reached(self) -> bool:
        return self.counted >= self.target

    def __str__(self) -> str:
        fields = f"{self.fields_used} field{'s' if self.fields_used != 1 else ''}"
        if self.reached:
            return f"{self.counted} of {self.target} white cells: target reached in {fields}"
        return f"{self.counted} of {self.target} white cells: target not reached ({fields})"


@dataclass(frozen=True)
class SlideCount:
    """One slide's count from all its fields; ``counts`` has each cell once."""
    fields: list[SlideField]
    overlaps: list[FieldOverlap]
    counts: dict[str, int]
    rbc_per_field: Spread
    plt_per_field: Spread
    platelet_rbc_ratio: float | None  # platelets over red cells, each counted once; None without red cells
    white_cells: WhiteCellCount

    @property
    def groups(self) -> list[list[str]]:
        """The fields of each group, in upload order; a field that overlaps no other is a group of its own."""
        groups: dict[int, list[str]] = {}
        for f in self.fields:
            groups.setdefault(f.group, []).append(f.file)
        return list(groups.values())

    def as_dict(self) -> dict:
        """JSON-ready, as stored in the analysis summary; ``from_dict`` reads it back."""
        return dataclasses.asdict(self) | {"statement": str(self.white_cells)}

    @classmethod
    def from_dict(cls, data: dict) -> SlideCount:
        return cls(fields=[SlideField(**f) for f in data["fields"]],
                   overlaps=[FieldOverlap(**o) for o in data["overlaps"]], counts=data["counts"],
                   rbc_per_field=Spread(**data["rbc_per_field"]), plt_per_field=Spread(**data["plt_per_field"]),
                   platelet_rbc_ratio=data["platelet_rbc_ratio"], white_cells=WhiteCellCount(**data["white_cells"]))


def count_slide(fields: list[FieldImage], boxes: list[DetectedBox],
                wbc_target: int = DEFAULT_WBC_TARGET) -> tuple[SlideCount, list[DetectedBox]]:
    """The slide's count, and the boxes with each cell once (in their own field's coordinates)."""
    check_wbc_target(wbc_target)
    files = [f.file for f in fields]
    overlaps = register_fields(fields)
    positions = place_fields(files, overlaps)
    unique = count_once(fields, positions, boxes)
    found, counted = _class_counts(files, boxes), _class_counts(files, unique)
    per_field = [SlideField(f, positions[f].group, positions[f].x, positions[f].y, found[f], counted[f])
                 for f in files]
    totals = {code: sum(f.counted[code] for f in per_field) for code in DETECTOR_CLASSES}
    return SlideCount(
        fields=per_field, overlaps=overlaps, counts=totals,
        rbc_per_field=Spread.of([f.found["RBC"] for f in per_field]),
        plt_per_field=Spread.of([f.found["PLT"] for f in per_field]),
        platelet_rbc_ratio=round(totals["PLT"] / totals["RBC"], 4) if totals["RBC"] else None,
        white_cells=_white_cells_to_target(files, unique, wbc_target)), unique


def _class_counts(files: list[str], boxes: list[DetectedBox]) -> dict[str, dict[str, int]]:
    """Boxes per field and detector class, zeros included."""
    per_file = Counter((b.file, b.class_code) for b in boxes)
    return {file: {code: per_file[(file, code)] for code in DETECTOR_CLASSES} for file in files}


def taken_white_cells(files: list[str], unique: list[DetectedBox], target: int) -> tuple[list[DetectedBox], int, int]:
    """The white cells counted once that the differential takes, field by field in upload order and in reading
    order within a field (top to bottom), until ``target`` cells of the differential, as it is counted at the
    microscope; with how many count towards the target and the fields used. A cell the report keeps apart (not
    identifiable, smudge, a blood film's erythroblast) is taken with the others but does not count towards the
    target (a cut cell typed "not identifiable" stopped the count short of the neutrophil in the next field)."""
    from ..signout import PERIPHERAL_BLOOD, in_differential

    white: dict[str, list[DetectedBox]] = {file: [] for file in files}
    for box in unique:
        if box.class_code == "WBC":
            white[box.file].append(box)
    taken: list[DetectedBox] = []
    counted = fields_used = 0
    for file in files:
        if counted >= target:
            break
        fields_used += 1
        for box in sorted(white[file], key=lambda b: (b.y1, b.x1)):
            if counted >= target:
                break
            taken.append(box)  # smear fields are blood films, as their sign-off assumes until told otherwise
            counted += not box.code or in_differential(box.code, specimen=PERIPHERAL_BLOOD)
    return taken, counted, fields_used


def _white_cells_to_target(files: list[str], unique: list[DetectedBox], target: int) -> WhiteCellCount:
    """The white-cell differential of the cells ``taken_white_cells`` takes."""
    taken, counted, fields_used = taken_white_cells(files, unique, target)
    typed = Counter(b.code for b in taken if b.code)
    total_typed = sum(typed.values())
    return WhiteCellCount(target, counted, fields_used,
                          {code: {"count": n, "percent": round(100 * n / total_typed, 1)}
                           for code, n in typed.most_common()},
                          len(taken) - total_typed)
