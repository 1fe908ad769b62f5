"""Detection speed on this machine: ms per 640x480 field (detection alone and detect-then-classify),
one 4000x3000 tiled image, and our ``detect`` against a bare ultralytics ``predict`` on the same
images (our overhead: reading, tiling decisions, counting).

Uses BCCD val fields from ../shared/datasets when they are there (says so), generated fields
otherwise; the shipped detector (models/detector) and classifier (models/classifier/default)
when it exists, or each ``--model`` given (several are measured one after the other in one run,
and the ratio of their detect times printed). Rounds are interleaved and the median is reported, as
the CPU is shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bloodcells.settings import PROJECT_DIR, apply_offline_environment

apply_offline_environment()

from PIL import Image  # noqa: E402

from bloodcells.detection import DEFAULT_BOX_CONFIDENCE, Detector, detect  # noqa: E402
from bloodcells.detection.pipeline import _default_classifier  # noqa: E402
from bloodcells.detection.tiling import plan_tiles  # noqa: E402
from bloodcells.synthetic import smear_field  # noqa: E402

FIELDS = 8
ROUNDS = 3
BCCD = PROJECT_DIR.parent / "shared" / "datasets" / "bccd" / "JPEGImages"


def fields() -> tuple[list[Image.Image], str]:
    if BCCD.is_dir():
        files = sorted(BCCD.glob("*.jpg"))[:FIELDS]
        return [Image.open(f).convert("RGB") for f in files], f"{len(files)} BCCD fields (640x480, {BCCD})"
    print("../shared/datasets/bccd not found: using generated smear fields", file=sys.stderr)
    return [smear_field(640, 480, seed=n)[0] for n in range(FIELDS)], f"{FIELDS} generated 640x480 fields"


def large_image(small: list[Image.Image]) -> Image.Image:
    """4000x3000 at the fields' own magnification: the fields laid side by side, repeated."""
    canvas = Image.new("RGB", (4000, 3000))
    n = 0
    for y in range(0, 3000, 480):
        for x in range(0, 4000, 640):
            canvas.paste(small[n % len(small)], (x, y))
            n += 1
    return canvas


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(detector: Detector, classifier, images: list[Image.Image], folder: Path, big: Path) -> dict[str, float]:
    """Median seconds of each run over interleaved rounds, after one warm-up."""
    yolo = detector.yolo

    def bare():
        for image in images:
            yolo.predict(image, imgsz=detector.imgsz, conf=DEFAULT_BOX_CONFIDENCE, iou=detector.iou, max_det=1000,
                         device="cpu", verbose=False)

    runs = {"bare ultralytics predict": bare,
            "detect (detection alone)": lambda: detect(folder, detector=detector, type_white_cells=False),
            "4000x3000 tiled image": lambda: detect(big, detector=detector, type_white_cells=False)}
    if classifier is not None:
        runs["detect-then-classify"] = lambda: detect(folder, detector=detector, classifier=classifier)
    for run in runs.values():  # warm up (first-call allocations, lazy imports)
        run()
    seconds = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            seconds[name].append(timed(run))
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="detector weights; repeat to compare detectors in one run (default: the shipped one)")
    args = parser.parse_args()
    detectors = [Detector.load(path) for path in args.model or [None]]
    classifier, skipped = _default_classifier()
    images, described = fields()
    print(f"{described}; median of {ROUNDS} rounds on {_cpu()}")
    per_field_detect = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fields"
        folder.mkdir()
        for n, image in enumerate(images):
            image.save(folder / f"field_{n}.png")
        big = Path(tmp) / "large.png"
        large_image(images).save(big)
        for detector in detectors:
            median = measure(detector, classifier, images, folder, big)
            per_field = {name: 1000 * median[name] / len(images) for name in median if name != "4000x3000 tiled image"}
            print(f"detector {detector.path} (imgsz {detector.imgsz}, tiles of {detector.tile_size} px, overlap "
                  f"{detector.overlap})")
            for name, ms in per_field.items():
                print(f"  {name:<28} {ms:8.1f} ms per field")
            tiles = len(plan_tiles(4000, 3000, detector.tile_size, detector.overlap))
            print(f"  {'4000x3000 tiled image':<28} {1000 * median['4000x3000 tiled image']:8.1f} ms ({tiles} tiles)")
            if classifier is None:
                print(f"  detect-then-classify: not measured ({skipped})")
            print(f"  ratio detect / bare predict: "
                  f"{per_field['detect (detection alone)'] / per_field['bare ultralytics predict']:.2f}")
            if classifier is not None:
                print(f"  ratio detect-then-classify / detect: "
                      f"{per_field['detect-then-classify'] / per_field['detect (detection alone)']:.2f}")
            per_field_detect.append(per_field["detect (detection alone)"])
    for detector, ms in zip(detectors[1:], per_field_detect[1:], strict=True):
        print(f"ratio detect with {detector.path} / with {detectors[0].path}: {ms / per_field_detect[0]:.2f}")
    return 0


def _cpu() -> str:
    import os

    import torch

    return f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"


if __name__ == "__main__":
    sys.exit(main())
