"""What the rest of the package hands to the store and gets back: plain rows, not ORM objects,
and the sha256 helpers that name contents (images, weights) everywhere."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def sha256_file(path: str | Path) -> str:
    """``sha256_hex`` of a file's content, read in blocks (weights and images are never held whole)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass
class PredictionRow:
    """One classified cell, as the classifier hands it to the store."""
    filename: str
    code: str
    path: str
    confidence: float
    level_confidences: dict
    needs_review: bool
    content: bytes | None = None


@dataclass
class DetectionRow:
    """One detected box, as the detector hands it to the store."""
    filename: str
    class_code: str
    score: float
    box: tuple[float, float, float, float]
    code: str | None = None
    path: str | None = None
    sub_confidence: float | None = None


@dataclass
class AnalysisRun:
    """An analysis being recorded by ``Store.analysis``; ``id`` is None when nothing is recorded.

    The block sets what the analysis finishes with: its predictions (read once, as a stream),
    detections and summary.
    """
    id: int | None
    predictions: Iterable[PredictionRow] = ()
    detections: Iterable[DetectionRow] = ()
    summary: dict | None = None


@dataclass
class ResultCounts:
    """How many results an analysis holds: cells, cells flagged for review and not reviewed yet, cells
    a person reviewed, changes made after a sign-off (amendments), boxes."""
    cells: int = 0
    needs_review: int = 0
    reviewed: int = 0
    amendments: int = 0
    boxes: int = 0
