"""Finding cells on smear fields with ultralytics YOLO, counting them and typing the white ones.

One module per concern: ``boxes`` (our classes and the box type), ``datasets`` (YOLO and VOC
sources rewritten into our classes), ``yolo`` (ultralytics, loaded offline), ``training``,
``tiling`` (large images), ``detector``, ``pipeline`` (an upload found, counted, typed and
stored) and ``drawing``. ultralytics and the store (SQLAlchemy) are imported only inside the
functions that need them, so importing this package stays quick.
"""

from .boxes import CLASS_NAMES, DETECTOR_CLASSES, DetectedBox, canonical_class
from .datasets import DatasetError, PreparedDataset, prepare_dataset
from .detector import DEFAULT_BOX_CONFIDENCE, Detector, DetectorFileError
from .drawing import annotate
from .pipeline import DetectionResult, detect
from .training import TrainedDetector, evaluate_detector, train_detector

__all__ = ["CLASS_NAMES", "DEFAULT_BOX_CONFIDENCE", "DETECTOR_CLASSES", "DatasetError", "DetectedBox",
           "DetectionResult", "Detector", "DetectorFileError", "PreparedDataset", "TrainedDetector", "annotate",
           "canonical_class", "detect", "evaluate_detector", "prepare_dataset", "train_detector"]
