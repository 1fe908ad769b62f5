"""Finding cells on smear fields with ultralytics YOLO, counting them and typing the white ones.

One module per concern: ``boxes`` (our classes and the box type), ``datasets`` (YOLO and VOC
sources rewritten into our classes), ``yolo`` (ultralytics, loaded offline), ``training``,
``tiling`` (large images), ``detector``, ``pipeline`` (an upload found, counted, typed and
stored), ``slide`` (fields of one slide registered and counted as one) and ``drawing``. ultralytics and the store (SQLAlchemy) are imported only inside the
functions that need them, so importing this package stays quick.
"""

from .boxes import CLASS_NAMES, DETECTOR_CLASSES, DetectedBox, canonical_class, reviewed_white_cells, white_cell_name
from .datasets import DatasetError, PreparedDataset, prepare_dataset
from .detector import (
    DEFAULT_BOX_CONFIDENCE,
    LARGEST_RED_CELL,
    MIN_TILE_SIZE,
    Detector,
    DetectorFileError,
    FoundBoxes,
    check_tile_size,
)
from .drawing import annotate
from .pipeline import DetectionResult, detect
from .slide import (
    DEFAULT_WBC_TARGET,
    FieldImage,
    FieldOverlap,
    SlideCount,
    check_wbc_target,
    count_slide,
    register_fields,
)
from .training import TrainedDetector, evaluate_detector, train_detector

__all__ = ["CLASS_NAMES", "DEFAULT_BOX_CONFIDENCE", "DEFAULT_WBC_TARGET", "DETECTOR_CLASSES", "LARGEST_RED_CELL",
           "MIN_TILE_SIZE", "DatasetError", "DetectedBox", "DetectionResult", "Detector", "DetectorFileError",
           "FieldImage", "FoundBoxes", "FieldOverlap", "PreparedDataset", "SlideCount", "TrainedDetector", "annotate",
           "canonical_class", "check_tile_size", "check_wbc_target", "count_slide", "detect", "evaluate_detector",
           "prepare_dataset", "register_fields", "reviewed_white_cells", "train_detector", "white_cell_name"]
