"""Generated cell images and smear fields, so tests and benchmarks never need real data.

Each cell type gets a fixed, clearly different look (nucleus colour, lobes, cell size) so that a
tiny model can learn it in a few epochs; smear fields are coloured discs with known boxes.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

BACKGROUND = (232, 220, 226)
RBC_COLOUR = (214, 120, 130)
PLATELET_COLOUR = (120, 70, 160)
SMEAR_CLASSES = ("WBC", "RBC", "Platelets")  # YOLO class ids 0, 1, 2 as in TXL-PBC


def _style(code: str) -> tuple[tuple[int, int, int], int, float]:
    """Nucleus colour, number of lobes and relative cell size, fixed per code."""
    digest = hashlib.sha256(code.encode()).digest()
    colour = (40 + digest[0] % 160, 20 + digest[1] % 120, 60 + digest[2] % 180)
    return colour, 1 + digest[3] % 4, 0.55 + (digest[4] % 30) / 100


def cell_image(code: str, seed: int = 0, size: int = 64) -> Image.Image:
    """A single-cell image whose look is set by ``code`` and varied by ``seed``."""
    rng = random.Random(f"{code}-{seed}")
    colour, lobes, scale = _style(code)
    image = Image.new("RGB", (size, size), tuple(c + rng.randint(-8, 8) for c in BACKGROUND))
    draw = ImageDraw.Draw(image)
    centre = size / 2 + rng.uniform(-size * 0.05, size * 0.05)
    radius = size * scale / 2 * rng.uniform(0.9, 1.05)
    draw.ellipse([centre - radius, centre - radius, centre + radius, centre + radius],
                 fill=(200 + rng.randint(-10, 10), 170 + rng.randint(-10, 10), 200))
    for lobe in range(lobes):
        angle = 2 * 3.14159 * lobe / lobes + rng.uniform(0, 0.5)
        offset = 0 if lobes == 1 else radius * 0.35
        cx, cy = centre + offset * math.cos(angle), centre + offset * math.sin(angle)
        r = radius * (0.55 if lobes == 1 else 0.3)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(c + rng.randint(-12, 12) for c in colour))
    return image.filter(ImageFilter.GaussianBlur(0.6))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def other_lab(image: Image.Image) -> Image.Image:
    """The cell as another lab's stain and camera show it: colours rotated (red->green->blue->red),
    lower magnification (the cell a third smaller, on the same background)."""
    red, green, blue = image.split()
    recoloured = Image.merge("RGB", (blue, red, green))
    small = recoloured.resize((round(image.width * 0.67), round(image.height * 0.67)), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", image.size, recoloured.getpixel((0, 0)))
    canvas.paste(small, ((image.width - small.width) // 2, (image.height - small.height) // 2))
    return canvas


def write_cell_folders(root: Path, counts: dict[str, int], size: int = 64, fmt: str = "png",
                       start_seed: int = 0, look: Callable[[Image.Image], Image.Image] | None = None) -> list[Path]:
    """``root/<label>/<label>_<n>.<fmt>`` for each label and count, each image passed through
    ``look`` if given (e.g. ``other_lab``); returns the files."""
    files = []
    for label, count in counts.items():
        folder = Path(root) / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(count):
            path = folder / f"{label}_{n:05d}.{fmt}"
            image = cell_image(label, start_seed + n, size)
            (look(image) if look else image).save(path)
            files.append(path)
    return files


def write_cell_zip(path: Path, counts: dict[str, int], size: int = 64, fmt: str = "PNG",
                   folders: bool = True) -> Path:
    """A zip of generated cells, one member per cell (``label/label_n.png`` or flat)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for label, count in counts.items():
            for n in range(count):
                name = f"{label}_{n:05d}.{fmt.lower()}"
                archive.writestr(f"{label}/{name}" if folders else name,
                                 encode(cell_image(label, n, size), fmt))
    return Path(path)


@dataclass(frozen=True)
class Box:
    cls: str  # one of SMEAR_CLASSES
    x1: float
    y1: float
    x2: float
    y2: float


def smear_field(width: int = 640, height: int = 480, n_wbc: int = 2, n_rbc: int = 12, n_platelets: int = 3,
                seed: int = 0, wbc_codes: Iterable[str] = ("NGS",)) -> tuple[Image.Image, list[Box]]:
    """A smear field of non-overlapping discs with their true boxes."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    boxes: list[Box] = []
    codes = list(wbc_codes)
    scale = min(width, height) / 480
    plan = [("WBC", 34 * scale)] * n_wbc + [("RBC", 22 * scale)] * n_rbc + [("Platelets", 6 * scale)] * n_platelets
    for cls, radius in plan:
        for _ in range(200):  # rejection sampling for a free spot
            r = radius * rng.uniform(0.9, 1.1)
            cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
            candidate = Box(cls, cx - r, cy - r, cx + r, cy + r)
            if all(_apart(candidate, other) for other in boxes):
                break
        else:
            continue
        boxes.append(candidate)
        bounds = [candidate.x1, candidate.y1, candidate.x2, candidate.y2]
        if cls == "WBC":
            cell = cell_image(codes[len([b for b in boxes if b.cls == "WBC"]) % len(codes)],
                              rng.randint(0, 10_000), int(2 * r)).resize((int(2 * r), int(2 * r)))
            mask = Image.new("L", cell.size, 0)
            ImageDraw.Draw(mask).ellipse([0, 0, cell.size[0] - 1, cell.size[1] - 1], fill=255)
            image.paste(cell, (int(candidate.x1), int(candidate.y1)), mask)
        else:
            draw.ellipse(bounds, fill=RBC_COLOUR if cls == "RBC" else PLATELET_COLOUR)
    return image, boxes


def _apart(a: Box, b: Box, gap: float = 3) -> bool:
    return a.x2 + gap < b.x1 or b.x2 + gap < a.x1 or a.y2 + gap < b.y1 or b.y2 + gap < a.y1


def write_yolo_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (320, 240)) -> Path:
    """A YOLO dataset (``data.yaml``, ``images/``, ``labels/``) of generated smear fields."""
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            image, boxes = smear_field(*size, seed=n + (0 if split == "train" else 5000))
            image.save(root / "images" / split / f"field_{n:03d}.jpg", quality=92)
            w, h = size
            lines = [f"{SMEAR_CLASSES.index(b.cls)} {(b.x1 + b.x2) / 2 / w:.6f} {(b.y1 + b.y2) / 2 / h:.6f} "
                     f"{(b.x2 - b.x1) / w:.6f} {(b.y2 - b.y1) / h:.6f}" for b in boxes]
            (root / "labels" / split / f"field_{n:03d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(SMEAR_CLASSES))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return root / "data.yaml"


def write_voc_dataset(root: Path, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (320, 240)) -> Path:
    """A Pascal VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main``) of smear fields."""
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("val", n_val)):
        ids = []
        for n in range(count):
            stem = f"BloodImage_{split}_{n:03d}"
            image, boxes = smear_field(*size, seed=1000 + n + (0 if split == "train" else 5000))
            image.save(root / "JPEGImages" / f"{stem}.jpg", quality=92)
            objects = "".join(
                f"<object><name>{b.cls}</name><bndbox><xmin>{round(b.x1)}</xmin><ymin>{round(b.y1)}</ymin>"
                f"<xmax>{round(b.x2)}</xmax><ymax>{round(b.y2)}</ymax></bndbox></object>" for b in boxes)
            (root / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width>"
                f"<height>{size[1]}</height><depth>3</depth></size>{objects}</annotation>")
            ids.append(stem)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
