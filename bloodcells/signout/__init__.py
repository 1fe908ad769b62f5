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

``counts`` (the rows and what is kept apart), ``records`` (the report's contents: ``build_report``, sign-off
status, amendments) and ``render`` (HTML, PDF).
"""

from ..store.schema import BONE_MARROW, PERIPHERAL_BLOOD, REOPENED, SIGNED, SPECIMENS
from .counts import (
    APART,
    CLINICAL_ORDER,
    ERYTHROBLASTS,
    GALLERY_CELLS,
    NOT_STATED,
    OTHERS,
    TARGETS,
    ReportError,
    Row,
    SlideDifferential,
    SmearFields,
    clinical_rows,
    differential_codes,
    erythroblasts_per_100,
    in_differential,
    percentages,
    slide_differential,
    smear_fields,
)
from .records import (
    AMENDED,
    NOT_SIGNED,
    SIGNED_VALUES,
    Amendment,
    ClinicalReport,
    Event,
    SignedReportError,
    ValueChange,
    build_report,
    report_specimen,
    signed_value_changes,
    signoff_status,
)
from .render import signoff_lines, to_html, to_pdf

__all__ = ["AMENDED", "APART", "BONE_MARROW", "CLINICAL_ORDER", "ERYTHROBLASTS", "GALLERY_CELLS", "NOT_SIGNED",
           "NOT_STATED", "OTHERS", "PERIPHERAL_BLOOD", "REOPENED", "SIGNED", "SIGNED_VALUES", "SPECIMENS", "TARGETS",
           "Amendment", "ClinicalReport", "Event", "ReportError", "Row", "SignedReportError", "SlideDifferential",
           "SmearFields", "ValueChange", "build_report", "clinical_rows", "differential_codes", "erythroblasts_per_100", "in_differential",
           "percentages", "report_specimen", "signed_value_changes", "signoff_lines", "signoff_status",
           "slide_differential", "smear_fields", "to_html", "to_pdf"]
