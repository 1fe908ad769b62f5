"""Storage: SQLAlchemy models and the Store that reads and writes them."""

from .database import DetectionRow, PredictionRow, Store, StoreError, open_store, sha256_hex
from .schema import (
                     Analysis,
                     Blob,
                     BlobChunk,
                     Cell,
                     CellType,
                     Detection,
                     Explanation,
                     Model,
                     ModelCellType,
                     ModelType,
                     Prediction,
                     Review,
)

__all__ = ["Analysis", "Blob", "BlobChunk", "Cell", "CellType", "Detection", "DetectionRow",
           "Explanation", "Model", "ModelCellType", "ModelType", "Prediction", "PredictionRow",
           "Review", "Store", "StoreError", "open_store", "sha256_hex"]
