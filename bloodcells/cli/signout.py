"""``bloodcells report``: the signed-off differential of one analysis, as PDF or HTML."""

from __future__ import annotations

from pathlib import Path

from . import CommandError, command, output_file, plural, whole


def _report_args(parser):
    from ..signout import SPECIMENS, TARGETS

    parser.add_argument("analysis", type=whole(1), metavar="ANALYSIS_ID",
                        help="the analysis (its id: `bloodcells analyses`, or History)")
    parser.add_argument("--out", required=True, help="FILE.pdf or FILE.html")
    parser.add_argument("--wbc", type=float, metavar="COUNT",
                        help="the white-cell count in 10^9/L, for absolute counts (e.g. 7.5; 0: none)")
    parser.add_argument("--target", type=int, choices=TARGETS,
                        help="cells to count (default: the sign-off's, else 200)")
    parser.add_argument("--specimen", choices=[specimen.replace(" ", "-") for specimen in SPECIMENS],
                        help="what was sampled (default: the sign-off's; unsigned, smear fields are peripheral "
                             "blood, cells not stated): a blood film's "
                             "erythroblasts are reported apart from its white cells, a marrow's M:E ratio")
    parser.add_argument("--category", help="a category (default: the sign-off's; no patient identifiers)")
    parser.add_argument("--comment", help="a free comment (default: the sign-off's; no patient identifiers)")


@command("report", "write the differential report of an analysis (PDF or HTML)", _report_args)
def _report(args) -> int:
    from ..signout import ReportError, build_report, to_html, to_pdf
    from ..store import open_store

    out = Path(args.out)
    if out.suffix.lower() not in {".pdf", ".html", ".htm"}:
        raise CommandError(f"{out}: the report is written as .pdf or .html")
    output_file(out)
    try:
        report = build_report(open_store(create=False), args.analysis, white_cell_count=args.wbc, target=args.target,
                              specimen=args.specimen and args.specimen.replace("-", " "), category=args.category, comment=args.comment)
    except ReportError as error:
        raise CommandError(str(error)) from error
    if out.suffix.lower() == ".pdf":
        out.write_bytes(to_pdf(report))
    else:
        out.write_text(to_html(report), encoding="utf-8")
    print(f"written {out}: {plural(report.counted, 'cell')} counted (target {report.target}), "
          f"{plural(report.unreviewed_flagged, 'flagged cell')} not reviewed")
    return 0
