"""The report a haematologist signs: one analysis's differential in the clinical order, as PDF or HTML.

Counts in the conventional order (blasts -> promyelocytes -> ... -> erythroblasts -> others),
percentages to a tenth over the cells counted that add up to 100 (platelets, smudge cells,
not-identifiable cells and artefacts are listed apart and left out of the denominator), absolute
counts when the user gives the white-cell count, the specimen: a marrow's myeloid:erythroid ratio, or
a blood film's erythroblasts apart from its white cells, per 100 of them; the cells counted
against a 100/200/400 target, the flagged cells nobody reviewed yet with a small gallery of them,
the models' versions, the reviewers and the time; its sign-offs, and once a signed analysis was
reopened and changed, "Amended" with every change made after the first sign-off (a cell's old and
new type, or a signed value's old and new value, who, when).
There is no field for a patient's name or identifier, by design: the report names the analysis, a
category and a free comment.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from itertools import pairwise
from pathlib import Path

from .clock import stamp
from .inputs import thumbnail_png
from .report import model_versions_text, myeloid_erythroid_ratio
from .store import signoff_text
from .store.reviews import MARROW_HAS_NO_ABSOLUTE_COUNTS
from .store.schema import BONE_MARROW, PERIPHERAL_BLOOD, REOPENED, SIGNED, SPECIMENS
from .taxonomy import Tree, default_tree

# (row label, tree codes counted in it), in the order a differential is written. A row takes the cells
# at or under its codes that no row before it took, so an inner node listed after its children's rows
# takes only the cells typed no finer than it: a reviewer's "neutrophil" (NEU, stage unclear) is
# counted with the segmented neutrophils, as labs count an unstaged neutrophil; an immature granulocyte
# of unclear stage (MYI, PBC's "ig") has a row of its own, as analysers report IG, rather than one
# stage's row it may not belong to. An erythroid cell (ERY) is an erythroblast, a thrombopoietic one
# (THR) a platelet: the tree has no other under them.
CLINICAL_ORDER = (
    ("Blasts", ("BLA", "LYI")),
    ("Promyelocytes", ("PMO",)),
    ("Myelocytes", ("MYB",)),
    ("Metamyelocytes", ("MMZ",)),
    ("Immature granulocytes, stage unclear", ("MYI",)),
    ("Band neutrophils", ("NGB",)),
    ("Segmented neutrophils", ("NGS", "NEU")),
    ("Eosinophils", ("EOS", "ABE")),
    ("Basophils", ("BAS",)),
    ("Monocytes", ("MON",)),
    ("Lymphocytes", ("LYT",)),
    ("Plasma cells", ("PLM",)),
    ("Erythroblasts", ("EBO", "PEB", "ERY")),
)
# A blood film's erythroblasts (nucleated red cells) are not white cells: its differential is of the
# white cells, and the erythroblasts are reported apart, per 100 of them (as analysers give NRBC/100 WBC).
ERYTHROBLASTS = next(row for row in CLINICAL_ORDER if row[0] == "Erythroblasts")
NOT_STATED = "not stated"  # the specimen of a sign-off that names none (all before it was asked)
# counted and shown, but not white cells of the differential: not in the denominator
APART = (("Platelets", ("PLT", "THR")), ("Smudge cells", ("KSC",)), ("Not identifiable", ("NIF",)),
         ("Artefacts", ("ART",)))
# every other code: hairy cells, faggot cells, cells known only to a node above several cell types
# (a lineage, "mature myeloid")
OTHERS = "Others"
TARGETS = (100, 200, 400)  # the usual manual differential counts (CLSI H20)
GALLERY_CELLS = 12


# an analysis's status in the count log: SIGNED and REOPENED as its last sign-off, or these
NOT_SIGNED, AMENDED = "not signed", "amended"


class ReportError(ValueError):
    """An analysis that cannot be reported (the message says why)."""


class SignedReportError(ReportError):
    """Values other than those signed given for the report of an analysis that is signed off."""


def signoff_status(signoffs, amendments: int) -> str:
    """``not signed``, ``signed``, ``reopened`` (open to amend now) or ``amended`` (signed again after
    cells or signed values were changed), from an analysis's sign-offs (oldest first) and its number of
    amendments (cells changed after the first sign-off)."""
    if not signoffs:
        return NOT_SIGNED
    if signoffs[-1].action == REOPENED:
        return REOPENED
    return AMENDED if amendments or signed_value_changes(signoffs) else SIGNED


# what a sign-off records for the report (a stored Signoff's fields), named as the report prints them
SIGNED_VALUES = (("white_cell_count", "White-cell count"), ("target", "Target"), ("specimen", "Specimen"),
                 ("category", "Category"), ("comment", "Comment"))


@dataclass
class ValueChange:
    """A signed value (white-cell count, target, specimen, category, comment) that a later sign-off changed."""
    at: datetime
    person: str
    value: str  # its name, as the report prints it
    old: str
    new: str


def signed_value_changes(signoffs) -> list[ValueChange]:
    """What each sign-off changed in the values of the sign-off before it, from an analysis's stored
    sign-offs and reopenings (oldest first)."""
    signed = [s for s in signoffs if s.action == SIGNED]
    return [ValueChange(later.created_at, later.person, label, old, new)
            for earlier, later in pairwise(signed) for name, label in SIGNED_VALUES
            if (old := _value_text(name, getattr(earlier, name))) != (new := _value_text(name, getattr(later, name)))]


def report_specimen(signoffs, kind: str) -> str | None:
    """The specimen an analysis's report is of unless told otherwise: its latest sign-off's (None, not
    stated, for one signed before the specimen was asked); never signed, smear fields (a detection) are
    a blood film, and cells are not stated. ``signoffs`` oldest first."""
    signed = [s for s in signoffs if s.action == SIGNED]
    if signed:
        return signed[-1].specimen
    return PERIPHERAL_BLOOD if kind == "detection" else None


def _value_text(name: str, value) -> str:
    if name == "specimen" and value is None:  # as the report's facts say it ("- -> peripheral blood" read as a slip)
        return NOT_STATED
    return "-" if value is None or value == "" else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Event:
    """A sign-off or reopening, as the report lists it (the fields of a stored ``Signoff``)."""
    action: str
    person: str
    created_at: datetime
    comment: str = ""  # the comment of a sign-off, the reason for a reopening


@dataclass
class Amendment:
    """A change made to a cell after the analysis was first signed off."""
    at: datetime
    reviewer: str
    cell: str
    old_code: str
    new_code: str


@dataclass
class Row:
    label: str
    count: int
    percent: float | None = None  # to a tenth, over the cells counted
    per_litre: float | None = None  # x 10^9/L, when the white-cell count is given


@dataclass(frozen=True)
class SmearFields:
    """A detection's red cells and platelets, which its report states beside the white cells (a signed
    blood film's record had only its white cells: no platelet estimate)."""
    fields: int
    red_cells: int  # on a slide, each cell once
    platelets: int
    red_cells_per_field: str  # mean ± SD (range) of each field's own count
    platelets_per_field: str
    slide: bool

    @property
    def platelet_rbc_ratio(self) -> float | None:
        return self.platelets / self.red_cells if self.red_cells else None


def smear_fields(summary: dict | None) -> SmearFields | None:
    """The red cells and platelets of a detection's stored summary (a slide's, each cell once), or None
    for an analysis with none."""
    from .detection.slide import Spread

    summary = summary or {}
    if slide := summary.get("slide"):
        counts, fields = slide["counts"], len(slide["fields"])
        red, platelets = Spread(**slide["rbc_per_field"]), Spread(**slide["plt_per_field"])
    elif per_image := summary.get("per_image"):
        counts, fields = summary["counts"], len(per_image)
        red, platelets = (Spread.of([image["counts"].get(code, 0) for image in per_image.values()])
                          for code in ("RBC", "PLT"))
    else:
        return None
    return SmearFields(fields, counts.get("RBC", 0), counts.get("PLT", 0), str(red), str(platelets), bool(slide))


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
    me_ratio: float | None  # a marrow's (or an unstated specimen's), never a blood film's
    unreviewed_flagged: int
    reviewers: list[str]
    reviewed_at: datetime | None
    model_versions: str
    white_cell_count: float | None = None
    specimen: str | None = None  # one of SPECIMENS, None: not stated
    erythroblasts_per_100: float | None = None  # a blood film's erythroblasts per 100 white cells counted
    category: str = ""
    comment: str = ""
    gallery: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file, code, image) of flagged cells
    status: str = NOT_SIGNED
    signoffs: list[Event] = field(default_factory=list)
    amendments: list[Amendment] = field(default_factory=list)
    value_changes: list[ValueChange] = field(default_factory=list)  # signed values changed by a later sign-off
    made_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    smear: SmearFields | None = None  # a detection's red cells and platelets


def clinical_rows(codes: Iterable[str], tree: Tree | None = None, white_cell_count: float | None = None,
                  specimen: str | None = None) -> tuple[list[Row], list[Row], int]:
    """The differential rows in clinical order, the rows kept apart, and the cells counted.

    Percentages, to a tenth, are over the counted cells and add up to 100 (``percentages``);
    ``white_cell_count`` (x 10^9/L) gives each row's absolute count. A code is counted in the first row
    whose codes lie at or above it. Of a ``specimen`` of peripheral blood, erythroblasts are kept apart.
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

    blood_film = specimen == PERIPHERAL_BLOOD
    apart, kept_apart = gather(APART + (ERYTHROBLASTS,) if blood_film else APART)
    rows, in_rows = gather(tuple(row for row in CLINICAL_ORDER if not (blood_film and row == ERYTHROBLASTS)))
    rows.append(Row(OTHERS, sum(n for code, n in counts.items() if code not in in_rows | kept_apart)))
    counted = sum(row.count for row in rows)
    if counted:
        for row, percent in zip(rows, percentages([row.count for row in rows]), strict=True):
            row.percent = percent
            if white_cell_count is not None:
                row.per_litre = white_cell_count * row.count / counted
    return rows, [row for row in apart if row.count], counted


def in_differential(code: str, tree: Tree | None = None, specimen: str | None = None) -> bool:
    """Whether a cell typed ``code`` counts in the differential of ``specimen`` (is not kept apart); a code
    of another tree (a classifier trained with its own) counts, as one of the "Others" would."""
    tree = tree or default_tree()
    return code not in tree or clinical_rows([code], tree, specimen=specimen)[2] == 1


def erythroblasts_per_100(apart: list[Row], counted: int) -> float | None:
    """A blood film's erythroblasts (in ``apart``, as ``clinical_rows`` keeps them) per 100 white cells
    counted; None without white cells."""
    erythroblasts = next((row.count for row in apart if row.label == ERYTHROBLASTS[0]), 0)
    return 100 * erythroblasts / counted if counted else None


def percentages(counts: list[int]) -> list[float]:
    """Percentages of ``counts`` (not all zero) to a tenth, as automated differentials give them, that
    add up to 100.0, so that the report's "Total counted ... 100.0" is true (each rounded alone, 1:1:1
    gave 33 + 33 + 33). Each is rounded down to its tenth and the tenths left go to the largest
    remainders (largest remainder method), on a tie to the larger count, then to the first; so no
    figure is more than a tenth off. In whole numbers that could be a whole point: 6 of 29 cells
    (20.7%) read 20% in one report and 21% in its amendment, where only other rows had changed."""
    total = sum(counts)
    shares = [divmod(1000 * count, total) for count in counts]  # (tenths of a percent, remainder in 1/total)
    tenths = [whole for whole, _ in shares]
    by_remainder = sorted(range(len(counts)), key=lambda n: (-shares[n][1], -counts[n]))
    for n in by_remainder[:1000 - sum(tenths)]:
        tenths[n] += 1
    return [value / 10 for value in tenths]


@dataclass(frozen=True)
class SlideDifferential:
    """The white cells a slide-mode detection counted, field by field, up to its target."""
    target: int
    codes: Counter  # tree code -> white cells of that type counted


def slide_differential(summary: dict | None) -> SlideDifferential | None:
    """A slide-mode analysis's differential as its Slide panel shows it (None for any other analysis):
    the report, the count log and the page must count these cells, not every white cell on the fields."""
    white = (summary or {}).get("slide", {}).get("white_cells")
    if not white:
        return None
    counted = Counter({code: row["count"] for code, row in white["differential"].items()})
    return SlideDifferential(white["target"], counted)


def build_report(store, analysis_id: int, *, white_cell_count: float | None = None, target: int | None = None,
                 specimen: str | None = None, category: str | None = None, comment: str | None = None,
                 tree: Tree | None = None) -> ClinicalReport:
    """The report of a finished analysis: its cells' final labels (a reviewer's label where given).

    The white-cell count, target, specimen, category and comment not given are those of the latest
    sign-off (the target defaults to 200 cells, the specimen to ``report_specimen``'s). While the analysis is
    signed off, its report says what was signed: other values are refused (SignedReportError), e.g. a
    draft from a page drawn before someone else signed it off.
    """
    tree = tree or default_tree()
    try:
        analysis = store.get_analysis(analysis_id)
    except KeyError:
        raise ReportError(f"analysis #{analysis_id} does not exist") from None
    if analysis.status == "running" and not analysis.being_stored:
        raise ReportError(f"analysis #{analysis_id} was interrupted (the process storing it stopped): it has no "
                          "results; run it again")
    if analysis.status != "done":
        reason = f" ({analysis.error})" if analysis.error else ""
        raise ReportError(f"analysis #{analysis_id} is {analysis.status}{reason}: only a finished analysis has a "
                          "report")
    try:  # as a sign-off takes them: a tab or a direction override printed as nothing in the PDF
        checked_category, checked_comment = signoff_text(category, comment)
    except ValueError as error:
        raise ReportError(str(error)) from error
    category = None if category is None else checked_category  # None: the sign-off's
    comment = None if comment is None else checked_comment
    signed = next((s for s in reversed(analysis.signoffs) if s.action == SIGNED), None)
    if analysis.signed_off is not None:
        given = {"white-cell count": (white_cell_count, signed.white_cell_count), "target": (target, signed.target),
                 "specimen": (specimen, signed.specimen), "category": (category, signed.category),
                 "comment": (comment, signed.comment)}
        if differing := [name for name, (value, kept) in given.items() if value is not None and value != kept]:
            raise SignedReportError(f"analysis #{analysis_id} is signed off by {signed.person} on "
                                    f"{stamp(signed.created_at)}: its report says the signed {', '.join(differing)}; "
                                    "reopen it to change them")
    if signed is not None:
        white_cell_count = signed.white_cell_count if white_cell_count is None else white_cell_count
        target = signed.target if target is None else target
        category = signed.category if category is None else category
        comment = signed.comment if comment is None else comment
    slide = slide_differential(analysis.summary)
    target = (slide.target if slide else 200) if target is None else target
    if target not in TARGETS and not (slide and target == slide.target):  # a slide counted to its own target
        raise ReportError(f"target {target}: a differential counts {', '.join(map(str, TARGETS))} cells")
    specimen = report_specimen(analysis.signoffs, analysis.kind) if specimen is None else specimen
    if specimen is not None and specimen not in SPECIMENS:
        raise ReportError(f"specimen {specimen!r}: a differential is of {' or '.join(SPECIMENS)}")
    if white_cell_count is not None and not 0 < white_cell_count < 1000:
        raise ReportError(f"white-cell count {white_cell_count}: give it in 10^9/L (e.g. 7.5)")
    if white_cell_count is not None and specimen == BONE_MARROW:
        raise ReportError(MARROW_HAS_NO_ABSOLUTE_COUNTS)
    if analysis.kind == "detection":
        codes = list(slide.codes.elements()) if slide else [d.code for d in analysis.detections if d.code]
        flagged, gallery_source = 0, []
        reviews = []
    else:
        codes = [p.final_code for p in analysis.predictions]
        unreviewed = [p for p in analysis.predictions if p.needs_review and not p.reviewed]
        flagged, gallery_source = len(unreviewed), unreviewed[:GALLERY_CELLS]
        reviews = [(p, r) for p in analysis.predictions for r in p.reviews]
    amendments = sorted((Amendment(r.created_at, r.reviewer, p.filename, r.old_code, r.new_code)
                         for p, r in reviews if r.reopening_id is not None), key=lambda a: a.at)
    rows, apart, counted = clinical_rows(codes, tree, white_cell_count, specimen)
    blood_film = specimen == PERIPHERAL_BLOOD
    gallery = [(p.filename, p.code, store.read_blob(p.blob_id)) for p in gallery_source if p.blob_id is not None]
    return ClinicalReport(
        analysis_id=analysis.id, name=analysis.name, kind=analysis.kind, created_at=analysis.created_at, rows=rows,
        apart=apart, counted=counted, target=target,
        me_ratio=None if blood_film else myeloid_erythroid_ratio(codes, tree), specimen=specimen,
        erythroblasts_per_100=erythroblasts_per_100(apart, counted) if blood_film else None,
        unreviewed_flagged=flagged, reviewers=sorted({r.reviewer for _, r in reviews}),
        reviewed_at=max((r.created_at for _, r in reviews), default=None),
        model_versions=model_versions_text(analysis.model_versions), white_cell_count=white_cell_count,
        category=(category or "").strip(), comment=(comment or "").strip(), gallery=gallery,
        status=signoff_status(analysis.signoffs, len(amendments)),
        signoffs=[Event(s.action, s.person, s.created_at, s.comment) for s in analysis.signoffs],
        amendments=amendments, value_changes=signed_value_changes(analysis.signoffs),
        smear=smear_fields(analysis.summary) if analysis.kind == "detection" else None)


def _facts(report: ClinicalReport) -> list[tuple[str, str]]:
    """The lines above the table, as (label, value)."""
    reached = "reached" if report.counted >= report.target else f"not reached: {report.target - report.counted} short"
    smear = report.smear
    fields = [] if smear is None else [
        ("Smear fields", f"{smear.fields} field{'s' if smear.fields != 1 else ''}: {smear.red_cells} red cells, "
                         f"{smear.platelets} platelets" + (" (each cell once)" if smear.slide else "")),
        ("Per field", f"red cells {smear.red_cells_per_field}; platelets {smear.platelets_per_field}"),
        ("Platelets : red cells", "-" if smear.platelet_rbc_ratio is None else f"{smear.platelet_rbc_ratio:.3f}")]
    return [
        ("Analysis", f"#{report.analysis_id} {report.name} ({report.kind}, {stamp(report.created_at)})"),
        ("Status", _status_text(report)),
        ("Specimen", report.specimen or NOT_STATED),
        ("Category", report.category or "-"),
        ("Cells counted", f"{report.counted} of a {report.target}-cell target ({reached})"),
        *fields,
        (("Erythroblasts", f"{sum(row.count for row in report.apart if row.label == ERYTHROBLASTS[0])} counted, "
                           "no white cells to give them per 100" if report.erythroblasts_per_100 is None
          else f"{report.erythroblasts_per_100:.1f} per 100 white cells (not in the differential)")
         if report.specimen == PERIPHERAL_BLOOD else
         ("Myeloid : erythroid", "-" if report.me_ratio is None else f"{report.me_ratio:.2f} : 1")),
        ("White-cell count", "-" if report.white_cell_count is None else f"{report.white_cell_count:g} x 10^9/L"),
        ("Flagged, not reviewed", str(report.unreviewed_flagged)),
        ("Reviewed by", ", ".join(report.reviewers) or "nobody yet"),
        ("Last review", "-" if report.reviewed_at is None else stamp(report.reviewed_at)),
        ("Models", report.model_versions or "not recorded"),
        ("Report made", stamp(report.made_at)),
    ]


def _status_text(report: ClinicalReport) -> str:
    if not report.signoffs:
        return "Not signed off"
    last = report.signoffs[-1]
    when = f"{last.person} on {stamp(last.created_at)}"
    return {SIGNED: f"Signed off by {when}", AMENDED: f"Amended: signed off again by {when}",
            REOPENED: f"Reopened to amend by {when}; not signed off again"}[report.status]


def _title(report: ClinicalReport) -> str:
    return "Differential count - AMENDED" if report.status == AMENDED else "Differential count"


def signoff_lines(signoffs) -> list[str]:
    """Stored sign-offs and reopenings (oldest first), one line each: when, what, who, the note."""
    return [f"{stamp(s.created_at)}  {s.action} by {s.person}" + (f": {s.comment}" if s.comment else "")
            for s in signoffs]


def _amendment_table(report: ClinicalReport) -> tuple[list[str], list[list[str]]]:
    """The audit trail of the changes made after the first sign-off: cells' types and signed values, by time."""
    changes = [(a.at, a.reviewer, a.cell, a.old_code, a.new_code) for a in report.amendments] \
        + [(c.at, c.person, c.value, c.old, c.new) for c in report.value_changes]
    return (["When", "By", "What", "Change"],
            [[stamp(at), person, what, f"{old} -> {new}"]
             for at, person, what, old, new in sorted(changes, key=lambda change: change[0])])


def _table(report: ClinicalReport) -> tuple[list[str], list[list[str]]]:
    header = ["Cell type", "Count", "%"] + (["x 10^9/L"] if report.white_cell_count is not None else [])
    body = [[row.label, str(row.count), "-" if row.percent is None else f"{row.percent:.1f}"]
            + (["-" if row.per_litre is None else f"{row.per_litre:.2f}"] if report.white_cell_count is not None else [])
            for row in report.rows]  # no per-litre figure where no white cell was counted
    body.append(["Total counted", str(report.counted), "100.0" if report.counted else "-"]
                + ([f"{report.white_cell_count:g}"] if report.white_cell_count is not None else []))
    return header, body


def _html_table(header: list[str], body: list[list[str]]) -> str:
    escape = html.escape
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body) + "</table>")


def to_html(report: ClinicalReport) -> str:
    """A self-contained HTML page (gallery images inline)."""
    import base64

    escape = html.escape
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _facts(report))
    apart = "".join(f"<li>{escape(row.label)}: {row.count}</li>" for row in report.apart) or "<li>none</li>"
    gallery = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(thumbnail_png(content, "cell", 128)).decode()}" '
                      f'width="96"><figcaption>{escape(name)} ({escape(code)})</figcaption></figure>'
                      for name, code, content in report.gallery)
    signoffs = "".join(f"<li>{escape(line)}</li>" for line in signoff_lines(report.signoffs))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Differential, analysis "
            f"#{report.analysis_id}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;"
            f"text-align:left}}figure{{display:inline-block;margin:4px}}p.comment{{white-space:pre-wrap}}</style></head><body>"
            f"<h1>{escape(_title(report))}</h1><table>{facts}</table>"
            f"<h2>Differential</h2>{_html_table(*_table(report))}<h2>Not in the count</h2><ul>{apart}</ul>"
            + (f"<h2>Flagged cells not yet reviewed</h2>{gallery}" if gallery else "")
            + (f"<h2>Comment</h2><p class='comment'>{escape(report.comment)}</p>" if report.comment else "")
            + (f"<h2>Sign-off</h2><ul>{signoffs}</ul>" if signoffs else "")
            + (f"<h2>Changes after the first sign-off</h2>{_html_table(*_amendment_table(report))}"
               if report.amendments or report.value_changes else "")
            + "</body></html>")


def to_pdf(report: ClinicalReport) -> bytes:
    """An A4 PDF with extractable text in DejaVu Sans (matplotlib's copy): names, comments and units
    as typed ("Müller", "Łukasz", "≥ 5%", "μL"); a character the font lacks (e.g. Chinese) is "?"."""
    from fpdf import FPDF

    regular, bold, covered = _pdf_font()

    def text(value: str) -> str:  # the font has no tab, and a carriage return would print as "?"
        value = value.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
        return "".join(c if ord(c) in covered or c == "\n" else "?" for c in value)

    def section(title: str) -> None:
        pdf.ln(2)
        pdf.set_font(PDF_FONT, "B", 10)
        pdf.cell(0, 6, text(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(PDF_FONT, size=9)

    def paragraph(value: str) -> None:
        pdf.multi_cell(0, 5, text(value), new_x="LMARGIN", new_y="NEXT")

    def table(header: list[str], body: list[list[str]], widths: tuple[int, ...]) -> None:
        with pdf.table(col_widths=widths, text_align="LEFT", width=sum(widths)) as grid:
            for values in [header, *body]:
                line = grid.row()
                for value in values:
                    line.cell(text(value))

    pdf = FPDF(format="A4")
    pdf.add_font(PDF_FONT, "", regular)
    pdf.add_font(PDF_FONT, "B", bold)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font(PDF_FONT, "B", 15)
    pdf.cell(0, 9, text(_title(report)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(PDF_FONT, size=9)
    for label, value in _facts(report):
        pdf.cell(42, 5, text(label))
        paragraph(value)
    pdf.ln(3)
    header, body = _table(report)
    table(header, body, (60, 25, 20, 30)[:len(header)])
    section("Not in the count")
    paragraph(", ".join(f"{row.label}: {row.count}" for row in report.apart) or "none")
    if report.gallery:
        size, per_row = 24, 7
        if pdf.will_page_break(8 + size + 7):  # the title with its first row
            pdf.add_page()
        section("Flagged cells not yet reviewed")
        for first in range(0, len(report.gallery), per_row):
            # a row goes whole to the next page: images are placed at a height, and fpdf breaks the page
            # only for text, which put a row's images at the foot of one page and their codes on the next
            if pdf.will_page_break(size + 7):
                pdf.add_page()
            top = pdf.get_y()
            for n, (_name, code, content) in enumerate(report.gallery[first:first + per_row]):
                x = pdf.l_margin + n * (size + 3)
                pdf.image(io.BytesIO(thumbnail_png(content, "cell", 128)), x=x, y=top, w=size, h=size)
                pdf.set_xy(x, top + size)
                pdf.set_font(PDF_FONT, size=7)
                pdf.cell(size, 4, text(code))
            pdf.set_xy(pdf.l_margin, top + size + 7)
        pdf.set_font(PDF_FONT, size=9)
    if report.comment:
        section("Comment")
        paragraph(report.comment)
    if report.signoffs:
        section("Sign-off")
        for line in signoff_lines(report.signoffs):
            paragraph(line)
    if report.amendments or report.value_changes:
        section("Changes after the first sign-off")
        table(*_amendment_table(report), (32, 35, 70, 40))
    return bytes(pdf.output())


PDF_FONT = "DejaVu"


@cache
def _pdf_font() -> tuple[Path, Path, frozenset[int]]:
    """DejaVu Sans regular and bold (shipped with matplotlib, a dependency) and the characters it has."""
    import matplotlib
    from fontTools.ttLib import TTFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    regular = folder / "DejaVuSans.ttf"
    return regular, folder / "DejaVuSans-Bold.ttf", frozenset(TTFont(regular).getBestCmap())
