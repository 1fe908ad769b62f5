"""Training and evaluation data: YOLO datasets (``data.yaml``) and Pascal VOC folders, rewritten
into one YOLO dataset whose classes are ours (``DETECTOR_CLASSES``), whatever each source calls them."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..inputs import IMAGE_SUFFIXES
from .boxes import CLASS_ALIASES, DETECTOR_CLASSES, canonical_class


class DatasetError(ValueError):
    """A training or evaluation dataset that cannot be used; the message names the file."""


@dataclass
class PreparedDataset:
    """A YOLO dataset in our classes, built from one or more sources."""
    yaml_path: Path
    counts: dict[str, dict[str, int]]  # split -> {"images": n, "skipped_duplicates": n, "skipped_leaks": n}


@dataclass
class _Sample:
    image: Path
    boxes: list[tuple[int, float, float, float, float]]  # class id, cx, cy, w, h (normalised)


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
        raise DatasetError(f"{where}: unknown class {'name' if len(set(unknown)) == 1 else 'names'} {', '.join(sorted(set(unknown)))}; accepted are "
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
    from ..store import sha256_file

    sources = [Path(s) for s in (sources if isinstance(sources, list | tuple) else [sources])]
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    tags = source_tags(sources)
    per_split = {split: [(tag, s) for tag, source in zip(tags, sources, strict=True)
                         for s in read_samples(source, split)] for split in ("train", "val")}
    if not per_split["train"] and not per_split["val"]:
        raise DatasetError(f"{', '.join(map(str, sources))}: no train or val images found")
    val_hashes = {sha256_file(sample.image) for _, sample in per_split["val"]}
    counts = {}
    for split, samples in per_split.items():
        seen, written, duplicates, leaks = set(), 0, 0, 0
        for tag, sample in samples:
            digest = sha256_file(sample.image)
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


def source_tags(sources: list[Path]) -> list[str]:
    """A distinct folder name per source: where its images go in the prepared dataset."""
    tags = []
    for source in sources:
        base = source.parent.name if source.is_file() else source.name
        tag, n = base or "data", 2
        while tag in tags:
            tag, n = f"{base}{n}", n + 1
        tags.append(tag)
    return tags
