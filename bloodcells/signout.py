"""The report a haematologist signs: one analysis's differential in the clinical order, as PDF or HTML.

Counts in the conventional order (blasts -> promyelocytes -> ... -> erythroblasts -> others),
whole-number percentages over the cells counted (platelets, smudge cells, not-identifiable cells
and artefacts are listed apart and left out of the denominator), absolute counts when the user
gives the white-cell count, the myeloid:erythroid ratio, the cells counted against a 100/200/400
target, the flagged cells nobody reviewed yet with a small gallery of them, the models'
versions, the reviewers and the time. There is no field for a patient's name or identifier, by
design: the report names the analysis, a category and a free comment.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .inputs import thumbnail_png
from .report import model_versions_text, myeloid_erythroid_ratio
from .taxonomy import Tree, default_tree

# (row label, tree codes counted in it), in the order a differential is written
CLINICAL_ORDER = (
    ("Blasts", ("BLA", "LYI")),
    ("Promyelocytes", ("PMO",)),
    ("Myelocytes", ("MYB",)),
    ("Metamyelocytes", ("MMZ",)),
    ("Band neutrophils", ("NGB",)),
    ("Segmented neutrophils", ("NGS",)),
    ("Eosinophils", ("EOS", "ABE")),
    ("Basophils", ("BAS",)),
    ("Monocytes", ("MON",)),
    ("Lymphocytes", ("LYT",)),
    ("Plasma cells", ("PLM",)),
    ("Erythroblasts", ("EBO", "PEB")),
)
# counted and shown, but not white cells of the differential: not in the denominator
APART = (("Platelets", ("PLT",)), ("Smudge cells", ("KSC",)), ("Not identifiable", ("NIF",)),
         ("Artefacts", ("ART",)))
OTHERS = "Others"  # every other code: hairy cells, faggot cells, cells known only to their lineage...
TARGETS = (100, 200, 400)  # the usual manual differential counts (CLSI H20)
GALLERY_CELLS = 12


class ReportError(ValueError):
    """An analysis that cannot be reported (the message says why)."""


@dataclass
class Row:
    label: str
    count: int
    percent: int | None = None  # whole number, over the cells counted
    per_litre: float | None = None  # x 10^9/L, when the white-cell count is given


@dataclass
class ClinicalReport:
    analysis_id: int
    name: str
    kind: str
    created_at: datetime
    rows: list[Row]
    apart: list[Row]
    counted: int
    target: int
    me_ratio: float | None
    unreviewed_flagged: int
    reviewers: list[str]
    reviewed_at: datetime | None
    model_versions: str
    white_cell_count: float | None = None
    category: str = ""
    comment: str = ""
    gallery: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file, code, image) of flagged cells
    made_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def clinical_rows(codes: Iterable[str], tree: Tree | None = None,
                  white_cell_count: float | None = None) -> tuple[list[Row], list[Row], int]:
    """The differential rows in clinical order, the rows kept apart, and the cells counted.

    Percentages are whole numbers over the counted cells; ``white_cell_count`` (x 10^9/L) gives
    each row's absolute count. A code is counted in the first row whose codes lie at or above it.
    """
    tree = tree or default_tree()
    counts = Counter(codes)
    unknown = sorted(code for code in counts if code not in tree)
    if unknown:
        raise ReportError(f"codes not in tree {tree.name!r}: {', '.join(unknown)}")

    def gather(groups) -> tuple[list[Row], set[str]]:
        rows, used = [], set()
        for label, group in groups:
            mine = [code for code in counts if code not in used
                    and any(tree.is_ancestor(tree[g], tree[code]) for g in group if g in tree)]
            used.update(mine)
            rows.append(Row(label, sum(counts[code] for code in mine)))
        return rows, used

    apart, kept_apart = gather(APART)
    rows, in_rows = gather(CLINICAL_ORDER)
    rows.append(Row(OTHERS, sum(n for code, n in counts.items() if code not in in_rows | kept_apart)))
    counted = sum(row.count for row in rows)
    for row in rows:
        row.percent = round(100 * row.count / counted) if counted else None
        if white_cell_count is not None and counted:
            row.per_litre = white_cell_count * row.count / counted
    return rows, [row for row in apart if row.count], counted


def build_report(store, analysis_id: int, *, white_cell_count: float | None = None, target: int = 200,
                 category: str = "", comment: str = "", tree: Tree | None = None) -> ClinicalReport:
    """The report of a finished analysis: its cells' final labels (a reviewer's label where given)."""
    tree = tree or default_tree()
    if target not in TARGETS:
        raise ReportError(f"target {target}: a differential counts {', '.join(map(str, TARGETS))} cells")
    if white_cell_count is not None and not 0 < white_cell_count < 1000:
        raise ReportError(f"white-cell count {white_cell_count}: give it in 10^9/L (e.g. 7.5)")
    try:
        analysis = store.get_analysis(analysis_id)
    except KeyError:
        raise ReportError(f"analysis #{analysis_id} does not exist") from None
    if analysis.status != "done":
        raise ReportError(f"analysis #{analysis_id} is {analysis.status}: only a finished analysis has a report")
    if analysis.kind == "detection":
        codes = [d.code for d in analysis.detections if d.code]
        flagged, gallery_source = 0, []
        reviews = []
    else:
        codes = [p.final_code for p in analysis.predictions]
        unreviewed = [p for p in analysis.predictions if p.needs_review and not p.reviews]
        flagged, gallery_source = len(unreviewed), unreviewed[:GALLERY_CELLS]
        reviews = [r for p in analysis.predictions for r in p.reviews]
    rows, apart, counted = clinical_rows(codes, tree, white_cell_count)
    gallery = [(p.filename, p.code, store.read_blob(p.blob_id)) for p in gallery_source if p.blob_id is not None]
    return ClinicalReport(
        analysis_id=analysis.id, name=analysis.name, kind=analysis.kind, created_at=analysis.created_at, rows=rows,
        apart=apart, counted=counted, target=target, me_ratio=myeloid_erythroid_ratio(codes, tree),
        unreviewed_flagged=flagged, reviewers=sorted({r.reviewer for r in reviews}),
        reviewed_at=max((r.created_at for r in reviews), default=None),
        model_versions=model_versions_text(analysis.model_versions), white_cell_count=white_cell_count,
        category=category.strip(), comment=comment.strip(), gallery=gallery)


def _facts(report: ClinicalReport) -> list[tuple[str, str]]:
    """The lines above the table, as (label, value)."""
    reached = "reached" if report.counted >= report.target else f"not reached: {report.target - report.counted} short"
    return [
        ("Analysis", f"#{report.analysis_id} {report.name} ({report.kind}, {report.created_at:%Y-%m-%d %H:%M} UTC)"),
        ("Category", report.category or "-"),
        ("Cells counted", f"{report.counted} of a {report.target}-cell target ({reached})"),
        ("Myeloid : erythroid", "-" if report.me_ratio is None else f"{report.me_ratio:.2f} : 1"),
        ("White-cell count", "-" if report.white_cell_count is None else f"{report.white_cell_count:g} x 10^9/L"),
        ("Flagged, not reviewed", str(report.unreviewed_flagged)),
        ("Reviewed by", ", ".join(report.reviewers) or "nobody yet"),
        ("Last review", "-" if report.reviewed_at is None else f"{report.reviewed_at:%Y-%m-%d %H:%M} UTC"),
        ("Models", report.model_versions or "not recorded"),
        ("Report made", f"{report.made_at:%Y-%m-%d %H:%M} UTC"),
    ]


def _table(report: ClinicalReport) -> tuple[list[str], list[list[str]]]:
    header = ["Cell type", "Count", "%"] + (["x 10^9/L"] if report.white_cell_count is not None else [])
    body = [[row.label, str(row.count), "-" if row.percent is None else str(row.percent)]
            + ([f"{row.per_litre:.2f}"] if report.white_cell_count is not None else []) for row in report.rows]
    body.append(["Total counted", str(report.counted), "100" if report.counted else "-"]
                + ([f"{report.white_cell_count:g}"] if report.white_cell_count is not None else []))
    return header, body


def to_html(report: ClinicalReport) -> str:
    """A self-contained HTML page (gallery images inline)."""
    import base64

    escape = html.escape
    header, body = _table(report)
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _facts(report))
    table = ("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body))
    apart = "".join(f"<li>{escape(row.label)}: {row.count}</li>" for row in report.apart) or "<li>none</li>"
    gallery = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(thumbnail_png(content, "cell", 128)).decode()}" '
                      f'width="96"><figcaption>{escape(name)} ({escape(code)})</figcaption></figure>'
                      for name, code, content in report.gallery)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Differential, analysis "
            f"#{report.analysis_id}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;"
            f"text-align:left}}figure{{display:inline-block;margin:4px}}</style></head><body>"
            f"<h1>Differential count</h1><table>{facts}</table><h2>Differential</h2><table>{table}</table>"
            f"<h2>Not in the count</h2><ul>{apart}</ul>"
            + (f"<h2>Flagged cells not yet reviewed</h2>{gallery}" if gallery else "")
            + (f"<h2>Comment</h2><p>{escape(report.comment)}</p>" if report.comment else "")
            + "</body></html>")


def to_pdf(report: ClinicalReport) -> bytes:
    """An A4 PDF with extractable text (fpdf2's core fonts: Latin-1)."""
    from fpdf import FPDF

    def text(value: str) -> str:  # core fonts are Latin-1: anything else becomes '?'
        return value.encode("latin-1", "replace").decode("latin-1")

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, "Differential count", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    for label, value in _facts(report):
        pdf.cell(42, 5, text(label))
        pdf.multi_cell(0, 5, text(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    header, body = _table(report)
    with pdf.table(col_widths=(60, 25, 20, 30)[:len(header)], text_align="LEFT", width=40 * len(header)) as table:
        for values in [header, *body]:
            line = table.row()
            for value in values:
                line.cell(text(value))
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(0, 6, "Not in the count", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    pdf.multi_cell(0, 5, text(", ".join(f"{row.label}: {row.count}" for row in report.apart) or "none"),
                   new_x="LMARGIN", new_y="NEXT")
    if report.gallery:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, "Flagged cells not yet reviewed", new_x="LMARGIN", new_y="NEXT")
        top, size = pdf.get_y(), 24
        for n, (_name, code, content) in enumerate(report.gallery):
            x, y = pdf.l_margin + (n % 7) * (size + 3), top + (n // 7) * (size + 7)
            pdf.image(io.BytesIO(thumbnail_png(content, "cell", 128)), x=x, y=y, w=size, h=size)
            pdf.set_xy(x, y + size)
            pdf.set_font("Helvetica", size=7)
            pdf.cell(size, 4, text(code))
        pdf.set_xy(pdf.l_margin, top + (len(report.gallery) + 6) // 7 * (size + 7))
    if report.comment:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, "Comment", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=9)
        pdf.multi_cell(0, 5, text(report.comment), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
