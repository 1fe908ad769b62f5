"""Training a YOLO detector on our classes and scoring one on a labelled dataset."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..settings import settings
from .datasets import DatasetError, prepare_dataset, read_samples, source_tags
from .detector import default_detector_path
from .yolo import load_yolo, torch_device, trained_input_size

DEFAULT_ARCHITECTURE = "yolo11n.yaml"


@dataclass
class TrainedDetector:
    path: Path  # the weights that ship / were written
    metrics: dict  # per val source: {"overall": {...}, "classes": {code: {...}}}
    dataset: dict  # image counts per split


def train_detector(data: list[Path] | Path, *, model: str | Path = DEFAULT_ARCHITECTURE, epochs: int = 50,
                   hours: float | None = None, imgsz: int = 320, batch: int = 16, workers: int = 2,
                   cache: bool | str = "ram", patience: int = 20, close_mosaic: int = 5,
                   multi_scale: float = 0.0, seed: int = 0, out: str | Path, work_dir: Path | None = None,
                   verbose: bool = True) -> TrainedDetector:
    """Train a YOLO detector on YOLO/VOC datasets (our classes) and write ``out``/detector.pt + metrics.json.

    ``hours`` bounds the run by time (ultralytics re-plans the epochs after the first one).
    ``multi_scale``: each batch at a size drawn within this fraction of ``imgsz`` (0.25: about
    360-600 px at 480, rounded to the network's stride), so that small platelets are also seen
    larger; the weights still predict at ``imgsz``.
    """
    from ..store import sha256_file

    if not 0 <= multi_scale < 1:
        raise ValueError(f"multi_scale is a fraction of imgsz, 0 (off) or more and below 1 (not {multi_scale})")
    out = Path(out)
    work_dir = Path(work_dir) if work_dir else settings().data_dir / "detector-training"
    prepared = prepare_dataset(data, work_dir / "dataset")
    if not prepared.counts["train"]["images"]:
        raise DatasetError(f"{', '.join(map(str, data if isinstance(data, list) else [data]))}: "
                           "no training images")
    yolo = load_yolo(model)
    yolo.train(data=str(prepared.yaml_path), epochs=epochs, time=hours, imgsz=imgsz, batch=batch,
               workers=workers, cache=cache, patience=patience, close_mosaic=close_mosaic,
               multi_scale=multi_scale, seed=seed, device=torch_device(), amp=False, plots=False,
               project=str(work_dir / "runs"), name="train", exist_ok=True, verbose=verbose)
    best = Path(yolo.trainer.best)
    trained = best if best.is_file() else Path(yolo.trainer.last)
    sources = [Path(s) for s in (data if isinstance(data, list | tuple) else [data])]
    metrics = {tag: evaluate_detector(source, model=trained, imgsz=imgsz, work_dir=work_dir / f"eval-{tag}")
               for tag, source in zip(source_tags(sources), sources, strict=True) if read_samples(source, "val")}
    start = Path(str(model))
    # fine-tuned from earlier weights: which ones (the architecture is then the one they were built from)
    initial = {"file": str(start), "sha256": sha256_file(start)} if start.suffix == ".pt" else None
    out.mkdir(parents=True, exist_ok=True)
    target = out / "detector.pt"
    record = {"architecture": yolo.model.yaml.get("yaml_file", str(model)), "initial_weights": initial,
              "imgsz": imgsz, "multi_scale": multi_scale, "epochs_run": yolo.trainer.epoch + 1,
              "dataset": prepared.counts, "val": metrics, "weights": target.name, "sha256": sha256_file(trained)}
    # Both files replace the old ones only once the new weights are scored, each whole (written beside it, then
    # renamed over it), one right after the other: the weights used to be copied in first, and for the minutes
    # of validation (for good, when it failed) the detector in use was refused as "damaged or replaced".
    shutil.copyfile(trained, staged := out / f".{target.name}.new")
    (staged_record := out / ".metrics.json.new").write_text(json.dumps(record, indent=2) + "\n")
    os.replace(staged, target)
    os.replace(staged_record, out / "metrics.json")
    return TrainedDetector(target, metrics, prepared.counts)


def evaluate_detector(data: Path, *, model: str | Path | None = None, imgsz: int | None = None,
                      split: str = "val", work_dir: Path | None = None) -> dict:
    """Precision, recall, mAP50 and mAP50-95 per class and overall, from ultralytics' validator.

    ``data`` is a YOLO dataset or VOC folder; it is converted to our classes first.
    """
    work_dir = Path(work_dir) if work_dir else settings().data_dir / "detector-evaluation"
    data = prepare_dataset([Path(data)], work_dir / "dataset").yaml_path
    weights = Path(model) if model else default_detector_path()
    yolo = load_yolo(weights)
    imgsz = imgsz or trained_input_size(yolo)
    result = yolo.val(data=str(data), split=split, imgsz=imgsz, batch=8, device=torch_device(), plots=False,
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

