"""Storage: SQLAlchemy models and the Store that reads and writes them."""

from .database import Store, StoreError, open_store, record_analysis
from .errors import DatabaseUnavailable, NoDatabase, NotFound
from .reviews import (
    COMMENT_LENGTH,
    NAME_LENGTH,
    AnalysisLocked,
    ChangedSince,
    ReviewError,
    check_specimen,
    person_name,
    signoff_text,
)
from .rows import AnalysisRun, DetectionRow, PredictionRow, ResultCounts, sha256_file, sha256_hex
from .schema import (
                     Analysis,
                     Blob,
                     BlobChunk,
                     CellType,
                     Detection,
                     Explanation,
                     Model,
                     ModelCellType,
                     ModelType,
                     ModelVersion,
                     Prediction,
                     Review,
                     Signoff,
)

__all__ = ["COMMENT_LENGTH", "NAME_LENGTH", "Analysis", "AnalysisLocked", "AnalysisRun", "Blob", "BlobChunk", "CellType",
           "ChangedSince", "DatabaseUnavailable", "Detection", "DetectionRow", "Explanation", "Model", "ModelCellType", "ModelType", "ModelVersion", "NoDatabase", "NotFound", "Prediction", "PredictionRow",
           "ResultCounts", "Review", "ReviewError", "Signoff", "Store", "StoreError", "open_store", "record_analysis", "sha256_file", "sha256_hex", "check_specimen", "person_name",
           "signoff_text"]
