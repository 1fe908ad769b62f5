"""A report's contents: the analysis's differential as signed (or drafted), its sign-offs and
amendments (``build_report``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise

from ..clock import stamp
from ..inputs import InputError, skipped_counts, thumbnail_png
from ..report import model_versions_text, myeloid_erythroid_ratio
from ..store import NotFound, check_specimen, signoff_text
from ..store.schema import PERIPHERAL_BLOOD, REOPENED, SIGNED
from ..taxonomy import Tree, default_tree
from .counts import (
    GALLERY_CELLS,
    NOT_STATED,
    TARGETS,
    ReportError,
    Row,
    SmearFields,
    clinical_rows,
    differential_codes,
    erythroblasts_per_100,
    slide_differential,
    smear_fields,
)

# an analysis's status in the count log: SIGNED and REOPENED as its last sign-off, or these
NOT_SIGNED, AMENDED = "not signed", "amended"


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


def differential_signed_before(analysis, tree: Tree, codes: list[str]) -> tuple[str | None, dict[str, Row]] | None:
    """The specimen and the differential (by row label) as the sign-off before the latest reopening signed them
    (its cells' types with the changes made since that reopening taken back, its white-cell count); None for an
    analysis never reopened. An amended report listed "c2.png: NGS -> BLA" and never the blasts first reported.
    ``codes``: the analysis's differential now (``differential_codes``)."""
    reopenings = [s for s in analysis.signoffs if s.action == REOPENED]
    if not reopenings:
        return None
    reopening = reopenings[-1]
    signed = next(s for s in reversed(analysis.signoffs) if s.action == SIGNED and s.id < reopening.id)
    # by cell; a detection stored before its white cells were kept as cells has none to review
    types = dict(zip([p.id for p in analysis.predictions] or range(len(codes)), codes, strict=True))
    since = sorted(((r.id, p.id, r.old_code) for p in analysis.predictions for r in p.reviews
                    if r.reopening_id == reopening.id), reverse=True)
    for _review, cell, before in since:  # the latest first, each giving back the type it replaced
        types[cell] = before
    rows, _apart, _counted = clinical_rows(types.values(), tree, signed.white_cell_count, signed.specimen)
    return signed.specimen, {row.label: row for row in rows}


def _gallery_image(content: bytes) -> bytes | None:
    """A stored cell as the gallery's PNG (128 px at most); None when it cannot be drawn: a white cell's crop
    of a few pixels, stored before detection framed every cell at least 16 px a side, made the whole
    report fail ("too small to show a cell")."""
    try:
        return thumbnail_png(content, "cell", 128)
    except InputError:
        return None


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
    gallery: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file, code, PNG) of flagged cells
    status: str = NOT_SIGNED
    signoffs: list[Event] = field(default_factory=list)
    amendments: list[Amendment] = field(default_factory=list)
    value_changes: list[ValueChange] = field(default_factory=list)  # signed values changed by a later sign-off
    made_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    smear: SmearFields | None = None  # a detection's red cells and platelets
    notes: list[str] = field(default_factory=list)  # the upload's files not used, why its counts may be doubtful
    cells: int = 0  # the analysis's cells (a detection's: its typed white cells kept as cells)
    # an amended or reopened analysis's differential as signed before the latest reopening: row label -> row
    signed_before: dict[str, Row] | None = None
    signed_before_specimen: str | None = None  # that sign-off's (None: not stated)
    reviewed_cells: int = 0  # of them, those a person reviewed: the rest are as the models typed them


def build_report(store, analysis_id: int, *, white_cell_count: float | None = None, target: int | None = None,
                 specimen: str | None = None, category: str | None = None, comment: str | None = None,
                 tree: Tree | None = None) -> ClinicalReport:
    """The report of a finished analysis: its cells' final labels (a reviewer's label where given).

    The white-cell count, target, specimen, category and comment not given are those of the latest
    sign-off (the target defaults to 200 cells, the specimen to ``report_specimen``'s); a white-cell count of 0
    is none (not known, as the page's field says): a reopened analysis's draft without one printed absolute
    counts from the count signed before. While the analysis is
    signed off, its report says what was signed: other values are refused (SignedReportError), e.g. a
    draft from a page drawn before someone else signed it off.
    """
    tree = tree or default_tree()
    try:
        analysis = store.get_analysis(analysis_id)
    except NotFound:
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
        given = {"white-cell count": (white_cell_count, signed.white_cell_count or 0), "target": (target, signed.target),
                 "specimen": (specimen, signed.specimen), "category": (category, signed.category),
                 "comment": (comment, signed.comment)}
        if differing := [name for name, (value, kept) in given.items() if value is not None and value != kept]:
            raise SignedReportError(f"analysis #{analysis_id} is signed off by {signed.person} on "
                                    f"{stamp(signed.created_at)}: its report says the signed {', '.join(differing)}; "
                                    "reopen it to change them")
    asked_absolute = bool(white_cell_count)  # given now, not taken from a sign-off made before the specimen was asked
    if signed is not None:
        white_cell_count = signed.white_cell_count if white_cell_count is None else white_cell_count
        target = signed.target if target is None else target
        category = signed.category if category is None else category
        comment = signed.comment if comment is None else comment
    white_cell_count = white_cell_count or None  # 0: none
    slide = slide_differential(analysis.summary)
    target = (slide.target if slide else 200) if target is None else target
    if target not in TARGETS and not (slide and target == slide.target):  # a slide counted to its own target
        raise ReportError(f"target {target}: a differential counts {', '.join(map(str, TARGETS))} cells")
    specimen = report_specimen(analysis.signoffs, analysis.kind) if specimen is None else specimen
    if white_cell_count is not None and not 0 < white_cell_count < 1000:
        raise ReportError(f"white-cell count {white_cell_count}: give it in 10^9/L (e.g. 7.5)")
    if asked_absolute and specimen is None:  # "not stated" counts as a marrow's: its erythroblasts got 10^9/L
        raise ReportError("a white-cell count gives a blood film's absolute counts: state the specimen (peripheral "
                          "blood)")
    try:  # as a sign-off takes them
        check_specimen(specimen, white_cell_count)
    except ValueError as error:
        raise ReportError(str(error)) from error
    codes = differential_codes(analysis)
    unreviewed = [p for p in analysis.predictions if p.needs_review and not p.reviewed]
    flagged, gallery_source = len(unreviewed), unreviewed[:GALLERY_CELLS]
    reviews = [(p, r) for p in analysis.predictions for r in p.reviews]
    amendments = sorted((Amendment(r.created_at, r.reviewer, p.filename, r.old_code, r.new_code)
                         for p, r in reviews if r.reopening_id is not None), key=lambda a: a.at)
    rows, apart, counted = clinical_rows(codes, tree, white_cell_count, specimen, limits=True)
    blood_film = specimen == PERIPHERAL_BLOOD
    gallery = [(p.filename, p.code, png) for p in gallery_source
               if p.blob_id is not None and (png := _gallery_image(store.read_blob(p.blob_id))) is not None]
    specimen_before, rows_before = differential_signed_before(analysis, tree, codes) or (None, None)
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
        smear=smear_fields(analysis.summary) if analysis.kind == "detection" else None,
        notes=upload_notes(analysis.summary or {}), cells=len(analysis.predictions),
        signed_before_specimen=specimen_before, signed_before=rows_before,
        reviewed_cells=sum(1 for p in analysis.predictions if p.reviewed))


def upload_notes(summary: dict) -> list[str]:
    """What a report says of its upload besides the cells: why its counts may not be trusted (a greyscale field,
    a box confidence near 0) and how many of its files were not used. Said only on the page that ran it, they
    never reached whoever signed the report from History."""
    files, pages = skipped_counts(summary.get("problems", []), summary.get("problems_total"))
    white = summary.get("counts", {}).get("WBC", 0)
    untyped = ([f"{white} white cell{'s' if white != 1 else ''} found, not typed ({summary['typing_skipped']}): not "
                "in the differential"] if summary.get("typing_skipped") and white else [])  # "0 cells counted"
    return [*summary.get("warnings", []), *untyped,
            *([f"{files} file{'s' if files != 1 else ''} of the upload not used (unreadable, blank, too small "
               "or not an image): History lists them"] if files else []),
            *([f"only the first page of {pages} multi-page file{'s' if pages != 1 else ''} read"]
              if pages else [])]


