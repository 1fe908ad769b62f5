"""A report as HTML or as an A4 PDF."""

from __future__ import annotations

import html
import io
from functools import cache
from pathlib import Path

from ..clock import stamp
from ..store.schema import PERIPHERAL_BLOOD, REOPENED, SIGNED
from ..taxonomy import default_tree
from .counts import ERYTHROBLASTS, NEUTROPHIL_ROWS, NOT_STATED, UNNAMED_WHITE_CELLS
from .records import AMENDED, ClinicalReport


def _facts(report: ClinicalReport) -> list[tuple[str, str]]:
    """The lines above the table, as (label, value)."""
    reached = "reached" if report.counted >= report.target else f"not reached: {report.target - report.counted} short"
    smear = report.smear
    fields = [] if smear is None else [
        ("Smear fields", f"{smear.fields} field{'s' if smear.fields != 1 else ''}: {smear.red_cells} red "
                         f"cell{'s' if smear.red_cells != 1 else ''}, {smear.platelets} "
                         f"platelet{'s' if smear.platelets != 1 else ''}" + (" (each cell once)" if smear.slide else "")),
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
        ("White-cell count", _white_cell_count_text(report)),
        *_neutrophils(report),
        ("Flagged, not reviewed", str(report.unreviewed_flagged)),
        # a signed count of 200 cells, 5 of them reviewed, read as a count a person had verified
        *([("Reviewed by a person", f"{report.reviewed_cells or 'none'} of the {report.cells} cells of the analysis"
                                    + (f" ({report.counted} in the differential)" if report.counted != report.cells else "")
                                    + ("" if report.reviewed_cells == report.cells else
                                       "; the others as the models typed them" if report.reviewed_cells else
                                       "; all as the models typed them"))] if report.cells else []),
        ("Reviewed by", ", ".join(report.reviewers) or "nobody yet"),
        ("Last review", "-" if report.reviewed_at is None else stamp(report.reviewed_at)),
        ("Models", report.model_versions or "not recorded"),
        ("Report made", stamp(report.made_at)),
    ]


def _white_cell_count_text(report: ClinicalReport) -> str:
    """The count as entered; with a blood film's erythroblasts, also what it corrects to if the analyser did not
    correct it: the absolute counts use the count as entered, and the report said nothing of which it was."""
    count, nrbc = report.white_cell_count, report.erythroblasts_per_100
    if count is None:
        return "-"
    text = f"{count:g} x 10^9/L"
    if report.specimen == PERIPHERAL_BLOOD and nrbc:
        text += (f", used as entered for the absolute counts; with {nrbc:.1f} erythroblasts per 100 white cells a "
                 f"count not corrected for them corrects to {count * 100 / (100 + nrbc):.2f} x 10^9/L "
                 f"(x 100 / {100 + nrbc:.1f})")
    return text


def _neutrophils(report: ClinicalReport) -> list[tuple[str, str]]:
    """Band and segmented neutrophils together, and the absolute neutrophil count (ANC) the clinician acts on:
    the table gives them apart (ICSH advises against telling them apart at all)."""
    rows = [row for row in report.rows if row.label in NEUTROPHIL_ROWS]
    if not report.counted or not rows:
        return []
    percent = sum(row.percent for row in rows)
    absolute = ("" if report.white_cell_count is None
                else f"; {sum(row.per_litre for row in rows):.2f} x 10^9/L (absolute neutrophil count)")
    return [("Neutrophils, total", f"{sum(row.count for row in rows)} ({percent:.1f}%){absolute}")]


def _apart_lines(report: ClinicalReport) -> list[str]:
    """The cells kept out of the differential, each with its count; the white cells no type was given (smudge,
    not identifiable) also as a share of all the white cells seen: 30 smudge cells beside 180 counted said
    nothing of the lymphocytes a smudged count leaves out."""
    unnamed = [row for row in report.apart if row.label in UNNAMED_WHITE_CELLS]
    seen = report.counted + sum(row.count for row in unnamed)
    cells = "white cells" if report.specimen == PERIPHERAL_BLOOD else "nucleated cells"  # a marrow's: erythroblasts too
    return [f"{row.label}: {row.count}" + (f" ({100 * row.count / seen:.1f}% of the {seen} {cells} seen)"
                                           if row in unnamed else "") for row in report.apart]


def _status_text(report: ClinicalReport) -> str:
    if not report.signoffs:
        return "Not signed off"
    last = report.signoffs[-1]
    when = f"{last.person} on {stamp(last.created_at)}"
    return {SIGNED: f"Signed off by {when}", AMENDED: f"Amended: signed off again by {when}",
            REOPENED: f"Reopened to amend by {when}; not signed off again"}[report.status]


def _gallery_title(report: ClinicalReport) -> str:
    """Its title says when it shows only the first of the flagged cells ("16 flagged" over 12 images)."""
    shown = len(report.gallery)
    return "Flagged cells not yet reviewed" + (f" (the first {shown} of {report.unreviewed_flagged})"
                                               if report.unreviewed_flagged > shown else "")


def _title(report: ClinicalReport) -> str:
    """Signed, amended, or a draft: a PDF made before the sign-off (or while reopened) read as the signed one."""
    return {AMENDED: "Differential count - AMENDED", SIGNED: "Differential count"}.get(
        report.status, "Differential count - DRAFT, not signed off")


def signoff_lines(signoffs, comments: bool = True) -> list[str]:
    """Stored sign-offs and reopenings (oldest first), one line each: when, what, who, the note. Without
    ``comments`` (the report, whose Comment section holds the sign-off's and whose changes list the ones
    before: a comment of 3,000 characters was printed again in every line, three pages of it), a sign-off's
    comment is left out; a reopening's reason never is."""
    return [f"{stamp(s.created_at)}  {s.action} by {s.person}"
            + (f": {s.comment}" if s.comment and (comments or s.action != SIGNED) else "") for s in signoffs]


def _amendment_table(report: ClinicalReport) -> tuple[list[str], list[list[str]]]:
    """The audit trail of the changes made after the first sign-off: cells' types (named as the table names them;
    a confirmation said so, not "BLA -> BLA") and signed values, by time."""
    changes = [(a.at, a.reviewer, a.cell, f"confirmed as {_cell_type(a.new_code)}" if a.old_code == a.new_code
                else f"{_cell_type(a.old_code)} -> {_cell_type(a.new_code)}") for a in report.amendments] \
        + [(c.at, c.person, c.value, f"{c.old} -> {c.new}") for c in report.value_changes]
    return (["When", "By", "What", "Change"],
            [[stamp(at), person, what, change] for at, person, what, change in sorted(changes, key=lambda c: c[0])])


def _cell_type(code: str) -> str:
    """A cell type as a reader knows it: its name, with the code the pages and keys use."""
    tree = default_tree()
    return f"{tree[code].title} ({code})" if code in tree else code


def _table(report: ClinicalReport) -> tuple[list[str], list[list[str]]]:
    before = report.signed_before
    counted_before = None if before is None else sum(row.count for row in before.values())
    header = (["Cell type", "Count", "%", "95% CI of %"] + (["x 10^9/L"] if report.white_cell_count is not None else [])
              + ([f"signed before ({report.signed_before_specimen or NOT_STATED}, {counted_before}): count (%)"]
                 if before is not None else []))
    body = [[row.label, str(row.count), "-" if row.percent is None else f"{row.percent:.1f}",
             "-" if row.limits is None else f"{row.limits[0]:.1f}-{row.limits[1]:.1f}"]
            + (["-" if row.per_litre is None else f"{row.per_litre:.2f}"] if report.white_cell_count is not None else [])
            + ([_signed_before(before.get(row.label))] if before is not None else [])
            for row in report.rows]  # no per-litre figure where no white cell was counted
    if before is not None:  # rows signed before that the differential now has not (a marrow's erythroblasts)
        shown = {row.label for row in report.rows}
        body += [[label, "-", "-", "-"] + (["-"] if report.white_cell_count is not None else []) + [_signed_before(row)]
                 for label, row in before.items() if label not in shown]
    body.append(["Total counted", str(report.counted), "100.0" if report.counted else "-", ""]
                + ([f"{report.white_cell_count:g}"] if report.white_cell_count is not None else [])
                + ([str(counted_before)] if before is not None else []))
    return header, body


# the differential's columns in the PDF, in mm (A4 less its margins is 190; "Faggot cells (abnormal
# promyelocytes)" wrapped at 55)
COLUMN_MM = {"Cell type": 70, "Count": 15, "%": 14, "95% CI of %": 26, "x 10^9/L": 20}
SIGNED_BEFORE_MM = 45
# "95% limits" read as a normal range, and 2 of 120 cells as 1.7% in one row and 1.6% in another as a slip
TABLE_NOTE = ("%: of the cells counted, to a tenth, rounded so that the rows add up to 100.0 (equal counts may differ "
              "by 0.1). 95% CI of %: where the share of that cell type lies, given a count of this size (exact "
              "binomial); not a reference range.")


def _signed_before(row) -> str:
    """A row of the differential signed before the reopening; "-" where that one had no such row (a blood
    film's erythroblasts, signed as marrow before)."""
    if row is None:
        return "-"
    return f"{row.count} ({row.percent:.1f})" if row.percent is not None else str(row.count)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    escape = html.escape
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body) + "</table>")


def to_html(report: ClinicalReport) -> str:
    """A self-contained HTML page (gallery images inline)."""
    import base64

    escape = html.escape
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _facts(report))
    apart = "".join(f"<li>{escape(line)}</li>" for line in _apart_lines(report)) or "<li>none</li>"
    gallery = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                      f'width="96"><figcaption>{escape(name)} ({escape(code)})</figcaption></figure>'
                      for name, code, png in report.gallery)
    signoffs = "".join(f"<li>{escape(line)}</li>" for line in signoff_lines(report.signoffs, comments=False))
    notes = "".join(f"<li>{escape(note)}</li>" for note in report.notes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(_title(report))}, analysis "
            f"#{report.analysis_id}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;"
            f"text-align:left}}figure{{display:inline-block;margin:4px}}p.comment{{white-space:pre-wrap}}</style></head><body>"
            f"<h1>{escape(_title(report))}</h1><table>{facts}</table>"
            + (f"<h2>Notes on the upload</h2><ul>{notes}</ul>" if notes else "") +
            f"<h2>Differential</h2>{_html_table(*_table(report))}<p><small>{escape(TABLE_NOTE)}</small></p>"
            f"<h2>Not in the count</h2><ul>{apart}</ul>"
            + (f"<h2>{escape(_gallery_title(report))}</h2>{gallery}" if gallery else "")
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
        if pdf.will_page_break(2 + 6 + 10):  # with its first line: a heading was left alone at a page's foot
            pdf.add_page()
        pdf.ln(2)
        pdf.set_font(PDF_FONT, "B", 10)
        pdf.cell(0, 6, text(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(PDF_FONT, size=9)

    def paragraph(value: str) -> None:  # ragged right: justified, names stood apart in wide gaps
        pdf.multi_cell(0, 5, text(value), new_x="LMARGIN", new_y="NEXT", align="L")

    def table(header: list[str], body: list[list[str]], widths: tuple[int, ...]) -> None:
        with pdf.table(col_widths=widths, text_align="LEFT", width=sum(widths)) as grid:
            for values in [header, *body]:
                line = grid.row()
                for value in values:
                    line.cell(text(value))

    class Pages(FPDF):
        def footer(self) -> None:
            """Every page says whose it is and which of how many: a loose page 2 (the gallery of a draft, a
            table's last row) could not be filed with its report, nor told to be a draft."""
            self.set_y(-12)
            self.set_font(PDF_FONT, size=7)
            self.cell(0, 5, text(f"Analysis #{report.analysis_id} · {_title(report)} · page {self.page_no()} of "
                                 "{nb}"), align="C")

    pdf = Pages(format="A4")
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
    if report.notes:
        section("Notes on the upload")
        for note in report.notes:
            paragraph(f"- {note}")
    pdf.ln(3)
    header, body = _table(report)
    table(header, body, tuple(COLUMN_MM.get(name, SIGNED_BEFORE_MM) for name in header))
    pdf.set_font(PDF_FONT, size=7)
    paragraph(TABLE_NOTE)
    pdf.set_font(PDF_FONT, size=9)
    section("Not in the count")
    paragraph("; ".join(_apart_lines(report)) or "none")
    if report.gallery:
        size, per_row = 24, 7
        if pdf.will_page_break(8 + size + 7):  # the title with its first row
            pdf.add_page()
        section(_gallery_title(report))
        for first in range(0, len(report.gallery), per_row):
            # a row goes whole to the next page: images are placed at a height, and fpdf breaks the page
            # only for text, which put a row's images at the foot of one page and their codes on the next
            if pdf.will_page_break(size + 7):
                pdf.add_page()
            top = pdf.get_y()
            for n, (_name, code, png) in enumerate(report.gallery[first:first + per_row]):
                x = pdf.l_margin + n * (size + 3)
                pdf.image(io.BytesIO(png), x=x, y=top, w=size, h=size)
                pdf.set_xy(x, top + size)
                pdf.set_font(PDF_FONT, size=7)
                pdf.cell(size, 4, text(f"{first + n + 1}. {code}"))
            pdf.set_xy(pdf.l_margin, top + size + 7)
        pdf.set_font(PDF_FONT, size=9)
        # the files, by number: a cell in the report is found again on the Review page by its name
        paragraph("; ".join(f"{n}.\u00a0{name}" for n, (name, _code, _png) in enumerate(report.gallery, 1)))
    if report.comment:
        section("Comment")
        paragraph(report.comment)
    if report.signoffs:
        section("Sign-off")
        for line in signoff_lines(report.signoffs, comments=False):
            paragraph(line)
    if report.amendments or report.value_changes:
        section("Changes after the first sign-off")
        # a paragraph a change, not a table row: fpdf cannot break a row across pages, and a changed comment
        # (up to 10,000 characters, twice) made every later PDF of the analysis fail
        _header, changes = _amendment_table(report)
        for when, person, what, change in changes:
            paragraph(f"{when} · {person} · {what}: {change}")
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

