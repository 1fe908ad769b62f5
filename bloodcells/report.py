"""Summaries of an analysis that the app shows and exports: differential, ratios, CSV, label zips.

Pure functions over cell-type codes and stored analyses (no streamlit), so that every figure a page
shows is computed, and tested, here.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .classify import TREE_VERSION
from .clock import stamp
from .inputs import is_image_name
from .spreadsheet import csv_bytes
from .taxonomy import Tree, default_tree

UNIDENTIFIED = "NIF"  # the tree's "not identifiable" leaf, the reviewer's "unidentified"


@dataclass(frozen=True)
class DifferentialRow:
    code: str
    name: str
    path: str
    count: int
    percent: float


def differential(codes: Iterable[str], tree: Tree | None = None) -> list[DifferentialRow]:
    """Counts and percentages per cell type, in the tree's order (root to leaves, depth first)."""
    tree = tree or default_tree()
    counts = Counter(codes)
    total = sum(counts.values())
    order = {node.code: position for position, node in enumerate(tree.root.walk())}
    unknown = sorted(set(counts) - set(order))
    if unknown:
        raise ValueError(f"codes not in tree {tree.name!r}: {', '.join(unknown)}")
    return [DifferentialRow(code, tree[code].name, tree.path_codes(code), counts[code],
                            100.0 * counts[code] / total)
            for code in sorted(counts, key=order.__getitem__)]


def subtree_count(codes: Iterable[str], tree: Tree, ancestor: str, exclude: Iterable[str] = ()) -> int:
    """How many codes lie at or under ``ancestor`` but not at or under any of ``exclude``."""
    top = tree[ancestor]
    excluded = [tree[code] for code in exclude]
    return sum(1 for code in codes
               if tree.is_ancestor(top, tree[code]) and not any(tree.is_ancestor(e, tree[code]) for e in excluded))


ABNORMAL_GRANULOCYTIC = ("ABE", "FGC")  # abnormal eosinophils, faggot cells: filed under "abnormal" in the tree


def myeloid_erythroid_ratio(codes: Iterable[str], tree: Tree | None = None) -> float | None:
    """Granulocytes and their precursors over erythroid precursors (the marrow M:E ratio).

    Monocytes sit under the myeloid lineage in the tree but, as in the usual definition of the
    ratio, are not counted; abnormal eosinophils and faggot cells sit under "abnormal" but are
    granulocytic cells, and are (the ratio left them out while the eosinophils' row counted them).
    None when there is no erythroid cell to divide by.
    """
    tree = tree or default_tree()
    codes = list(codes)
    erythroid = subtree_count(codes, tree, "ERY")
    if erythroid == 0:
        return None
    abnormal_granulocytic = sum(subtree_count(codes, tree, code) for code in ABNORMAL_GRANULOCYTIC if code in tree)
    return (subtree_count(codes, tree, "MYE", exclude=["MON"]) + abnormal_granulocytic) / erythroid


def sunburst_data(codes: Iterable[str], tree: Tree | None = None) -> dict[str, list]:
    """``ids``, ``labels``, ``parents`` and ``values`` for a plotly sunburst (branchvalues="total").

    Each node's value is the number of cells at or below it; the root is the centre. A cell the
    tree could only place at an inner node (e.g. "neutrophil") counts there and in its ancestors.
    """
    tree = tree or default_tree()
    totals: Counter[str] = Counter()
    for code in codes:
        for node in tree.path(code):
            totals[node.code] += 1
    data: dict[str, list] = {"ids": [], "labels": [], "parents": [], "values": []}
    for node in tree.root.walk():
        if totals[node.code]:
            data["ids"].append(node.code)
            data["labels"].append(node.title)
            data["parents"].append(node.parent.code if node.parent else "")
            data["values"].append(totals[node.code])
    return data


def review_choices(code: str, tree: Tree | None = None) -> list[str]:
    """Every leaf, nearest in the tree to ``code`` first (siblings, then cousins...), then the rest.

    The reviewer's one-click alternatives are the first few; "unidentified" is always offered
    separately. Ties keep the tree's order.
    """
    tree = tree or default_tree()
    chain = [node.code for node in tree.path(code)]

    def distance(leaf) -> int:
        leaf_chain = [node.code for node in tree.path(leaf.code)]
        shared = 0
        for mine, theirs in zip(chain, leaf_chain, strict=False):
            if mine != theirs:
                break
            shared += 1
        return len(chain) + len(leaf_chain) - 2 * shared

    leaves = [leaf for leaf in tree.leaves() if leaf.code != code]
    return [leaf.code for leaf in sorted(leaves, key=distance)]


def classifier_overview(classifier) -> list[dict]:
    """One row per trained node of a loaded tree: what it tells apart, how, how well, when."""
    trained_at = _lab_time(classifier.manifest.get("trained_at"))  # ISO 8601 in UTC, e.g. 2026-11-22T00:50:46Z
    return [{"node": code, "name": classifier.tree[code].title, "children": ", ".join(node.classes),
             "architecture": node.architecture, "input px": node.input_size,
             "val accuracy": node.metrics.get("val_accuracy"), "trained": trained_at, "sha256": node.sha256[:12]}
            for code, node in classifier.nodes.items()]


def _lab_time(iso: str | None) -> str:
    """An ISO 8601 time (with its offset, or Z; none: UTC) in the lab's zone, as every page shows times;
    "" when there is none or it cannot be read."""
    from datetime import datetime

    try:
        return stamp(datetime.fromisoformat(iso)) if iso else ""
    except ValueError:
        return ""


def detector_overview(detector) -> dict:
    """The loaded detector: file, input size, when it was trained (the date ultralytics writes into its
    checkpoint; the file's time said when it was copied, e.g. checked out) and its validation mAP50
    (from the ``metrics.json`` training writes beside the weights, when there is one)."""
    from .detection.detector import weights_record

    path = Path(detector.path)
    try:  # the record of these weights: another file's scores were shown for them
        validation = weights_record(path).get("val", {})
    except (OSError, ValueError):
        validation = {}
    map50 = {source: figures.get("overall", {}).get("mAP50") for source, figures in validation.items()}
    return {"file": path.name, "classes": ", ".join(detector.classes.values()), "input px": detector.imgsz,
            "trained": _lab_time((getattr(detector.yolo, "ckpt", None) or {}).get("date")),
            "val mAP50": ", ".join(f"{source} {value:.3f}" for source, value in map50.items() if value is not None),
            "sha256": detector.sha256[:12]}


# -- stored analyses ----------------------------------------------------------------------------
def prediction_records(analysis, tree: Tree | None = None) -> list[dict]:
    """One row per classified cell of a stored analysis: the model's answer (``code``, ``name``,
    ``path``, ``confidence``), the reviewer's label where given, and the type the cell has now
    (``final_code``, ``final_name``, ``final_path``: the reviewer's, else the model's)."""
    tree = tree or default_tree()
    return [{"id": p.id, "file": p.filename, "code": p.code, "name": tree[p.code].name, "path": p.path,
             "confidence": round(p.confidence, 4), "needs_review": p.needs_review,
             "reviewed_code": p.reviewed_code or "", "final_code": p.final_code,
             "final_name": tree[p.final_code].name, "final_path": tree.path_codes(p.final_code)}
            for p in analysis.predictions]


def detection_records(analysis) -> list[dict]:
    """One row per detected box of a stored analysis: white cells with the tree's answer and, for those kept
    as cells of the analysis, the type a reviewer gave (``reviewed_code``; the CSV said the model's type
    beside a PDF that counted the reviewed one)."""
    from .detection.boxes import reviewed_white_cells, white_cell_name

    reviewed = reviewed_white_cells(analysis)
    return [{"file": d.filename, "class": d.class_code, "confidence": round(d.score, 4),
             "x1": round(d.x1, 1), "y1": round(d.y1, 1), "x2": round(d.x2, 1), "y2": round(d.y2, 1),
             "code": d.code or "", "path": d.path or "",
             "sub_confidence": None if d.sub_confidence is None else round(d.sub_confidence, 4),
             "reviewed_code": reviewed.get(white_cell_name(d.filename, d.x1, d.y1), "") if d.code else ""}
            for d in analysis.detections]


def analysis_counts(analysis) -> dict[str, int]:
    """Cells per final label (classification) or boxes per class (detection)."""
    if analysis.kind == "detection":
        return dict(Counter(d.class_code for d in analysis.detections))
    return dict(Counter(p.final_code for p in analysis.predictions))


def analysis_csv(store, analysis_id: int, tree: Tree | None = None) -> bytes:
    """The CSV of a stored analysis as it is when asked (its cells with their reviews, or its boxes): made
    from the records a page drew, it missed a colleague's review made since, which the PDF beside it had."""
    from .signout import ReportError
    from .store import NotFound

    try:
        analysis = store.get_analysis(analysis_id)
    except NotFound:
        raise ReportError(f"analysis #{analysis_id} does not exist (deleted meanwhile?)") from None
    return records_csv(detection_records(analysis) if analysis.kind == "detection"
                       else prediction_records(analysis, tree))


def records_csv(records: list[dict]) -> bytes:
    """CSV of a list of flat dicts, the header from the first record (``spreadsheet.csv_bytes``:
    UTF-8 with a byte-order mark, a text a spreadsheet would run as a formula written as text)."""
    if not records:
        return b""
    header = list(records[0])
    # true/false as the command line's CSVs write them (the pages' wrote Python's True/False)
    return csv_bytes(header, ([str(value).lower() if isinstance(value, bool) else value
                               for value in (record.get(column, "") for column in header)] for record in records))


def labelled_zip(cells: Iterable[tuple[str, str, bytes]]) -> bytes:
    """A zip of ``<code>/<code>_<n>_<file name>`` members from (file name, code, content) triples.

    The class folders are tree codes, and each file name starts with its own code, so that
    ``bloodcells train`` reads back exactly the label given (a name such as ``BNE_1.jpg`` would
    otherwise refine a reviewer's "neutrophil" to a band neutrophil).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for n, (filename, code, content) in enumerate(cells):
            base = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePosixPath(filename.replace("\\", "/")).name)
            if not is_image_name(base):  # a detection's white cell, named by its field: its crop is a PNG
                base += ".png"
            archive.writestr(f"{code}/{code}_{n:05d}_{base}", content)
    return buffer.getvalue()


def analysis_overview(store, kind: str | None = None, limit: int = 200, search: str = "",
                      reviewed: bool = False, also: int | None = None) -> list[dict]:
    """The newest analyses (``search``, ``reviewed``, ``also``: see ``Store.list_analyses``), one row
    each: when, what, whether signed off (the list said "done" alone: which were signed was only in the count
    log), how many cells or boxes, which models."""
    from .signout import signoff_status

    analyses = store.list_analyses(kind=kind, limit=limit, search=search, reviewed=reviewed, also=also)
    counts = store.result_counts(a.id for a in analyses)
    signoffs = store.signoffs(a.id for a in analyses)
    return [{"id": a.id, "date": stamp(a.created_at), "kind": a.kind, "name": a.name,
             "status": a.status, "sign-off": signoff_status(signoffs[a.id], counts[a.id].amendments),
             "count": counts[a.id].boxes if a.kind == "detection" else counts[a.id].cells,
             "needs review": counts[a.id].needs_review, "reviewed": counts[a.id].reviewed,
             "models": model_versions_text(a.model_versions), "error": a.error or ""}
            for a in analyses]


def model_versions_text(versions: dict | None) -> str:
    """``tree version shipped, ALL 1a2b3c4d, MYE 5e6f7a8b`` from {node: sha256} (a sha256 shortened
    to its first 8 digits; the tree's version id and nested values as they are)."""
    return ", ".join(f"{node} {value[:8]}" if isinstance(value, str) and node != TREE_VERSION else f"{node} {value}"
                     for node, value in (versions or {}).items())


def reviewed_cells(store, analysis) -> Iterable[tuple[str, str, bytes]]:
    """(file name, final label, image content) for each stored cell of an analysis."""
    for prediction in analysis.predictions:
        if prediction.blob_id is not None:
            yield prediction.filename, prediction.final_code, store.read_blob(prediction.blob_id)
