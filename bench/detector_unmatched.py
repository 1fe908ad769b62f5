"""Where the detector's unmatched boxes come from: cells found that no label box matches.

BCCD leaves many red cells without a box (at the field's edges, in clumps), and a found but
unlabelled cell counts as a false positive, which caps BCCD's RBC precision whatever the detector
does. This script runs the detector on each source's val split at the app's confidence (0.25),
matches its boxes to the label boxes (same class, IoU >= 0.5, most confident first) and sorts the
unmatched ones: touching the field's border, overlapping a label box of the class (a clump or a
poorly placed box), or standing alone (a cell nobody boxed, or a real false positive). With
``--draw DIR`` it writes the fields with the most unmatched red cells: label boxes thin grey,
unmatched boxes thick magenta, to look at.

Needs ../shared/datasets (says so and stops when it is not there).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from bloodcells.settings import PROJECT_DIR, apply_offline_environment

apply_offline_environment()

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bloodcells.detection import DEFAULT_BOX_CONFIDENCE, DETECTOR_CLASSES, Detector  # noqa: E402
from bloodcells.detection.datasets import read_samples  # noqa: E402

DATASETS = PROJECT_DIR.parent / "shared" / "datasets"
BORDER = 4  # px: a box this close to the edge holds a cell the field cuts


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch
    from ultralytics.utils.metrics import box_iou

    return box_iou(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)).numpy()


def unmatched(found: list, labels: np.ndarray) -> list:
    """The found boxes (most confident first) that take no label box at IoU >= 0.5."""
    found = sorted(found, key=lambda b: -b.confidence)
    if not len(labels):
        return found
    overlaps = iou_matrix(np.array([b.xyxy for b in found]).reshape(-1, 4), labels)
    free = np.ones(len(labels), bool)
    left = []
    for row, box in zip(overlaps, found, strict=True):
        candidates = np.where(free, row, 0)
        if candidates.max(initial=0) >= 0.5:
            free[candidates.argmax()] = False
        else:
            left.append(box)
    return left


def kind_of(box, labels: np.ndarray, width: int, height: int) -> str:
    x1, y1, x2, y2 = box.xyxy
    if x1 <= BORDER or y1 <= BORDER or x2 >= width - BORDER or y2 >= height - BORDER:
        return "at the border"
    if len(labels) and iou_matrix(np.array([box.xyxy]), labels).max() >= 0.1:
        return "overlapping a label box"
    return "alone"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="detector weights (default: the shipped one)")
    parser.add_argument("--sources", nargs="+", default=["bccd", "txl-pbc"])
    parser.add_argument("--draw", type=Path, default=None, metavar="DIR",
                        help="write the fields with the most unmatched red cells here")
    parser.add_argument("--fields", type=int, default=4, help="how many fields --draw writes per source")
    args = parser.parse_args()
    if not DATASETS.is_dir():
        print(f"{DATASETS} not found: nothing to measure", file=sys.stderr)
        return 0
    detector = Detector.load(args.model)
    print(f"detector {detector.path} (imgsz {detector.imgsz}), confidence {DEFAULT_BOX_CONFIDENCE}, IoU >= 0.5")
    for source in args.sources:
        samples = read_samples(DATASETS / source, "val")
        totals, left, kinds, worst = Counter(), Counter(), Counter(), []
        unlabelled_fields = sum(not any(DETECTOR_CLASSES[c] == "RBC" for c, *_ in s.boxes) for s in samples)
        for sample in samples:
            image = Image.open(sample.image).convert("RGB")
            width, height = image.size
            found = detector.find(image, sample.image.name)
            truth = {code: np.array([((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                      (cy + h / 2) * height) for c, cx, cy, w, h in sample.boxes
                                     if DETECTOR_CLASSES[c] == code]).reshape(-1, 4) for code in DETECTOR_CLASSES}
            red_left = []
            for code in DETECTOR_CLASSES:
                mine = [b for b in found if b.class_code == code]
                missed = unmatched(mine, truth[code])
                totals[code] += len(mine)
                left[code] += len(missed)
                if code == "RBC":
                    red_left = missed
                    kinds.update(kind_of(b, truth[code], width, height) for b in missed)
            worst.append((len(red_left), sample, image, truth, red_left))
        print(f"== {source}: {len(samples)} val fields, {unlabelled_fields} of them without any red-cell label box")
        for code in DETECTOR_CLASSES:
            share = left[code] / totals[code] if totals[code] else 0
            print(f"  {code}: {totals[code]} found, {left[code]} unmatched ({share:.1%}); "
                  f"precision at this confidence {1 - share:.3f}")
        red = sum(kinds.values())
        print("  unmatched red cells: " + ", ".join(f"{kind} {n} ({n / red:.0%})" for kind, n in kinds.most_common())
              if red else "  no unmatched red cells")
        if args.draw:
            args.draw.mkdir(parents=True, exist_ok=True)
            for count, sample, image, truth, red_left in sorted(worst, key=lambda w: -w[0])[:args.fields]:
                pen = ImageDraw.Draw(image)
                for box in truth["RBC"]:
                    pen.rectangle(tuple(box), outline=(150, 150, 150), width=1)
                for box in red_left:
                    pen.rectangle(box.xyxy, outline=(230, 0, 230), width=3)
                target = args.draw / f"{source}-{sample.image.stem}-{count}-unmatched.png"
                image.save(target)
                print(f"  wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
