"""Our detector classes, the names other datasets use for them, and the box the detector reports."""

from __future__ import annotations

from dataclasses import dataclass

# Detector classes, in YOLO class-id order: white cells (typed further by the tree), red cells, platelets.
DETECTOR_CLASSES = ("WBC", "RBC", "PLT")
CLASS_NAMES = {"WBC": "white cell", "RBC": "red cell", "PLT": "platelet"}
# Names other datasets use for our classes (compared lower-case, '_' and '-' read as spaces).
CLASS_ALIASES = {
    "WBC": {"wbc", "white cell", "white cells", "white blood cell", "white blood cells", "leukocyte",
            "leucocyte", "leukocytes", "leucocytes"},
    "RBC": {"rbc", "red cell", "red cells", "red blood cell", "red blood cells", "erythrocyte", "erythrocytes"},
    "PLT": {"plt", "pc", "platelet", "platelets", "thrombocyte", "thrombocytes"},
}


def canonical_class(name: str) -> str | None:
    """Our detector class for a dataset's class name (``Platelets`` -> ``PLT``), or None."""
    folded = " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())
    for code, aliases in CLASS_ALIASES.items():
        if folded == code.lower() or folded in aliases:
            return code
    return None


@dataclass
class DetectedBox:
    """One cell found on an image; white cells also carry the tree's answer."""
    file: str
    class_code: str  # WBC, RBC or PLT
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float
    code: str | None = None  # the tree's cell type, white cells only
    path: str | None = None
    sub_confidence: float | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2

    @property
    def cell_name(self) -> str:
        """What this box is called as a cell of its analysis, when it is a typed white cell."""
        return white_cell_name(self.file, self.x1, self.y1)


def white_cell_name(file: str, x1: float, y1: float) -> str:
    """What the typed white cell boxed from (x1, y1) on ``file`` is called as a cell of its analysis (on the
    Review page); the detection CSV and the drawn field find its reviewed type by it."""
    return f"{file} · white cell at ({x1:.0f}, {y1:.0f})"


def reviewed_white_cells(analysis) -> dict[str, str]:
    """The type a reviewer gave each white cell of a stored detection analysis, by its name as a cell."""
    return {p.filename: p.reviewed_code for p in analysis.predictions if p.reviewed}
