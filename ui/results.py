"""How a stored analysis is shown: used right after it runs and again from History."""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import replace

import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from bloodcells import report
from bloodcells.detection import CLASS_NAMES, DETECTOR_CLASSES, SlideCount
from bloodcells.inputs import InputError, open_image, thumbnail_png
from bloodcells.signout import PERIPHERAL_BLOOD, clinical_rows, differential_codes, erythroblasts_per_100
from bloodcells.store import NotFound, Store
from bloodcells.taxonomy import default_tree
from ui.common import link_to, skipped_files
from ui.signoff import flagged_not_reviewed, shown_specimen, signoff_panel

THUMBNAIL_PX = 48
MAX_THUMBNAILS = 2000  # beyond this the table shows names only: the page must stay responsive
GALLERY_CELLS = 60  # flagged cells shown on the Classification and History pages; Review shows every one


@st.cache_data(show_spinner=False, max_entries=20_000)
def _cell_png(_store: Store, url: str, sha256: str, size: int | None) -> bytes | None:
    """``url`` and the content's ``sha256`` key the cache (never the blob id: SQLite gives a deleted
    blob's id to the next image stored); the unhashed ``_store`` reads the content. Content that is not
    there raises NotFound, which is not cached: the same image stored again is shown."""
    try:
        return thumbnail_png(_store.read_blob(sha256=sha256), f"stored image {sha256[:12]}", size)
    except InputError:  # the content itself: the same for every read
        return None


def cell_image_bytes(store: Store, prediction, size: int | None = None) -> bytes | None:
    """A stored cell's image as PNG, scaled to fit ``size`` pixels when given; None if unreadable."""
    if prediction.image_sha256 is None:
        return None
    try:
        return _cell_png(store, store.url, prediction.image_sha256, size)
    except NotFound:  # deleted meanwhile (History, another tab)
        return None


def data_uri(png: bytes | None) -> str | None:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}" if png else None


def show_analysis(store: Store, analysis, with_slide: bool = True, with_notes: bool = True) -> None:
    """Everything about one analysis, by kind; ``with_slide=False`` leaves out a slide's count and
    ``with_notes=False`` the upload's notes (a page that shows them apart)."""
    if analysis.status == "failed":
        st.error(f"This analysis failed and holds no results: {analysis.error}")
        return
    if analysis.status == "running":
        st.info("This analysis is still running (or was interrupted before it finished).")
        return
    if with_notes:
        show_upload_notes(analysis)
    if analysis.kind == "detection":
        if with_slide and "slide" in (analysis.summary or {}):
            st.subheader("Slide")
            show_slide(SlideCount.from_dict(analysis.summary["slide"]), analysis, key=f"slide-{analysis.id}")
            st.subheader("Cells counted once")
        show_detection(store, analysis)
    else:
        show_classification(store, analysis)


def show_upload_notes(analysis) -> None:
    """The files of the upload that were not used, with why, and why its counts may not be trusted (a greyscale
    field, a box confidence near 0): kept with the analysis, they were said only on the page that ran it, and
    whoever signed it off from History never learnt of them."""
    summary = analysis.summary or {}
    skipped_files(summary.get("problems", []), summary.get("problems_total"))
    for warning in summary.get("warnings", []):
        st.warning(warning)


def show_classification(store: Store, analysis) -> None:
    tree = default_tree()
    records = report.prediction_records(analysis, tree)
    if not records:
        st.warning("No cell of this upload could be classified.")
        return
    codes = [r["final_code"] for r in records]
    # "Needs review" means what it means on Review and in the report: flagged and not reviewed yet.
    unreviewed = [p for p in analysis.predictions if p.needs_review and not p.reviewed]
    specimen = shown_specimen(analysis)  # as its report counts: a blood film has no M:E ratio
    columns = st.columns(4)
    columns[0].metric("Cells", len(records))
    columns[1].metric("Needs review", len(unreviewed))
    columns[2].metric("Reviewed", sum(1 for p in analysis.predictions if p.reviewed))

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Differential")
        apart, counted = show_differential(codes, key=f"percent-{analysis.id}", specimen=specimen)
    with right:
        st.plotly_chart(sunburst(codes), key=f"sunburst-{analysis.id}")
    if specimen == PERIPHERAL_BLOOD:  # the metrics' row above, filled from the differential's count
        per_100 = erythroblasts_per_100(apart, counted)
        columns[3].metric("Erythroblasts / 100 white cells", "–" if per_100 is None else f"{per_100:.1f}",
                          help="A blood film's erythroblasts (nucleated red cells), counted apart from its white "
                          "cells, as its report gives them.")
    else:
        ratio = report.myeloid_erythroid_ratio(codes, tree)
        columns[3].metric("Myeloid : erythroid", "–" if ratio is None else f"{ratio:.2f} : 1",
                          help="Granulocytes and their precursors over erythroid precursors (monocytes not counted)."
                          + (" No erythroid cell was found, so there is no ratio." if ratio is None else ""))
        if specimen is None:  # a newcomer read the marrow's M:E ratio of a blood film as the film's
            st.caption("Specimen not stated yet: counted as a bone marrow's (erythroblasts in the differential, the "
                       "M:E ratio). Choose the specimen in the sign-off panel; a blood film's erythroblasts are "
                       "counted apart, per 100 white cells.")

    # read at the click (a colleague's review since the page was drawn is in it, as in the PDF); the rerun says
    # when the analysis was deleted meanwhile (the download then fails, and said nothing)
    st.download_button("Download CSV", lambda: report.analysis_csv(store, analysis.id, tree),
                       file_name=f"analysis-{analysis.id}.csv", mime="text/csv", key=f"csv-{analysis.id}",
                       icon=":material/download:")
    signoff_panel(store, analysis)
    if unreviewed:
        with st.expander(f"Needs review: {len(unreviewed)} cell{'s' if len(unreviewed) != 1 else ''} under the "
                         "confidence threshold, not reviewed yet",
                         expanded=True):
            link_to("pages/4_Review.py", "Review them")
            gallery(store, unreviewed[:GALLERY_CELLS])
            if len(unreviewed) > GALLERY_CELLS:
                st.caption(f"The first {GALLERY_CELLS} are shown; the Review page shows them all.")
    st.subheader("Cells")
    st.dataframe(cell_table(store, analysis, records), hide_index=True, key=f"cells-{analysis.id}",
                 column_config={"image": st.column_config.ImageColumn("image", width="small"),
                                "model's confidence": st.column_config.ProgressColumn(
                                    "model's confidence", min_value=0.0, max_value=1.0, format="%.2f")})


def show_differential(codes: list[str], key: str, specimen: str | None = None) -> tuple[list, int]:
    """The white-cell differential as the report to sign prints it (of ``specimen``, as the report's); the cells
    it leaves out, apart. Returns those rows kept apart and the cells counted."""
    percentages = st.toggle("Percentages", key=key)
    rows, apart, counted = clinical_rows(codes, specimen=specimen)
    # every row shown: at the default height (ten rows) a laptop screen hid the last rows, lymphocytes among them
    st.dataframe([{"cell type": row.label, ("%" if percentages else "count"): row.percent if percentages else row.count}
                  for row in rows], hide_index=True, height="content")
    st.caption(f"Cells counted: {counted}. Not in the count: "
               + (", ".join(f"{row.label}: {row.count}" for row in apart) or "none") + ".")
    return apart, counted


def sunburst(codes: list[str]) -> go.Figure:
    data = report.sunburst_data(codes)
    figure = go.Figure(go.Sunburst(ids=data["ids"], labels=data["labels"], parents=data["parents"],
                                   values=data["values"], branchvalues="total",
                                   hovertemplate="%{label}: %{value} cells<extra></extra>"))
    figure.update_layout(margin={"t": 10, "l": 0, "r": 0, "b": 10}, height=360)
    return figure


def cell_table(store: Store, analysis, records: list[dict]) -> list[dict]:
    """Each cell's type now (the reviewer's where given: type, code and path agree), then the model's answer."""
    with_images = len(records) <= MAX_THUMBNAILS
    if not with_images:
        st.caption(f"{len(records)} cells: thumbnails are shown for uploads of up to {MAX_THUMBNAILS}.")
    rows = []
    for prediction, record in zip(analysis.predictions, records, strict=True):
        image = (data_uri(cell_image_bytes(store, prediction, THUMBNAIL_PX))
                 if with_images else None)
        rows.append({"image": image, "file": record["file"], "type": record["final_name"], "code": record["final_code"],
                     "path": record["final_path"], "model's type": record["name"],
                     "model's confidence": record["confidence"], "needs review": record["needs_review"],
                     "reviewed": record["reviewed_code"]})
    return rows


def gallery(store: Store, predictions, columns: int = 8) -> None:
    grid = st.columns(columns)
    for n, prediction in enumerate(predictions):
        png = cell_image_bytes(store, prediction, 96)
        with grid[n % columns]:
            if png:
                st.image(png, caption=f"{prediction.final_code} {prediction.confidence:.2f}")
            else:
                st.caption(f"{prediction.filename}: {prediction.final_code}")


def show_detection(store: Store, analysis) -> None:
    records = report.detection_records(analysis)
    if not records:
        st.warning("No cell was found on these images.")
        return
    counts = Counter(r["class"] for r in records)
    classes = [*DETECTOR_CLASSES, *sorted(set(counts) - set(DETECTOR_CLASSES))]
    columns = st.columns(len(classes) + 1)
    # Fields where no cell was found count too (analyses stopped before their summary count what has cells).
    columns[0].metric("Images", (analysis.summary or {}).get("images", len({r["file"] for r in records})))
    for column, cls in zip(columns[1:], classes, strict=True):
        column.metric(cls, counts[cls], help=CLASS_NAMES.get(cls))
    white = differential_codes(analysis)  # a slide's stops at its target; reviewed types count, as in its report
    if analysis.predictions:  # its typed white cells, flagged like classified cells, are reviewed on Review
        flagged = sum(1 for p in analysis.predictions if p.needs_review)
        waiting = flagged_not_reviewed(analysis)
        typed = len(analysis.predictions)
        st.caption(f"{typed} white cell{'s' if typed != 1 else ''} typed (the differential below counts a reviewed "
                   "one as its reviewer typed it) · "
                   + (f"**{waiting} flagged for review, not reviewed yet**" if waiting else
                      f"all {flagged} flagged for review reviewed" if flagged else "none flagged for review"))
        link_to("pages/4_Review.py", "Review its white cells")
    if white:
        st.subheader("White-cell differential")
        show_differential(white, key=f"wbc-percent-{analysis.id}", specimen=shown_specimen(analysis))
    st.download_button("Download CSV", lambda: report.analysis_csv(store, analysis.id),  # as above
                       file_name=f"detections-{analysis.id}.csv", mime="text/csv", key=f"det-csv-{analysis.id}",
                       icon=":material/download:")
    if white:
        signoff_panel(store, analysis)
    # the lab's columns; the box corners stay in the CSV
    st.dataframe(records, hide_index=True, key=f"boxes-{analysis.id}", placeholder="",
                 column_order=["file", "class", "confidence", "code", "sub_confidence", "reviewed_code"],
                 column_config={"file": "image", "class": st.column_config.TextColumn("cell", help=", ".join(
                                    f"{code}: {name}" for code, name in CLASS_NAMES.items())),
                                "confidence": st.column_config.NumberColumn("box confidence", format="%.2f"),
                                "code": "white-cell type",
                                "sub_confidence": st.column_config.NumberColumn("type confidence", format="%.2f"),
                                "reviewed_code": "reviewed type"})


def show_slide(slide: SlideCount, analysis, key: str) -> None:
    """A slide's count: the whole slide, the white-cell differential to its target, each field, the overlaps."""
    groups = [group for group in slide.groups if len(group) > 1]
    ratio = slide.platelet_rbc_ratio
    columns = st.columns(5)
    columns[0].metric("Fields", len(slide.fields), help="Images read as fields of this slide.")
    columns[1].metric("Overlapping groups", len(groups),
                      help="Fields that show the same place, directly or through others (the table's 'group'); a "
                      "cell they share counts once.")
    columns[2].metric("Platelets : red cells", "n/a" if ratio is None else f"{ratio:.3f}",
                      help="Over the slide, each cell counted once."
                      + (" No red cell was found." if ratio is None else
                         f" {ratio * 100:.1f} platelets per 100 red cells."))
    columns[3].metric("Red cells per field", _spread(slide.rbc_per_field),
                      help=f"Mean ± SD (range {slide.rbc_per_field.low}–{slide.rbc_per_field.high}) of the red "
                      "cells found on each field.")
    columns[4].metric("Platelets per field", _spread(slide.plt_per_field),
                      help=f"Mean ± SD (range {slide.plt_per_field.low}–{slide.plt_per_field.high}) of the "
                      "platelets found on each field.")
    st.caption("Whole slide, each cell once: " + ", ".join(
        f"{slide.counts[cls]} {CLASS_NAMES.get(cls, cls)}{'s' if slide.counts[cls] != 1 else ''}"
        for cls in DETECTOR_CLASSES))

    white = slide.white_cells
    heading = st.empty()  # said with the count the report makes, found below
    codes = differential_codes(analysis)  # the types of the cells counted, as reviewed since
    counted = show_differential(codes, key=f"{key}-percent", specimen=shown_specimen(analysis))[1] if codes \
        else white.counted
    now = replace(white, counted=counted)
    # a cell reviewed as unidentified left the count: "100 of 100, target reached" stood over "Cells counted: 99"
    # and a report of "99 of a 100-cell target"
    changed = (f" {white.counted} were counted as the fields were detected; the reviews since (or the specimen) "
               "changed which the differential holds, as the report counts them.") if counted != white.counted else ""
    (heading.success if now.reached else heading.warning)(f"Differential: {now}.{changed}")
    if white.untyped:
        st.caption(f"{white.untyped} of the white cells counted have no type (typing off or unavailable).")

    left, right = st.columns([3, 2])
    left.dataframe([{"field": f.file, "group": f.group + 1, "x": f.x, "y": f.y,
                     **{f"{cls} found": f.found[cls] for cls in DETECTOR_CLASSES},
                     **{f"{cls} counted": f.counted[cls] for cls in DETECTOR_CLASSES}} for f in slide.fields],
                   hide_index=True, key=f"{key}-fields")
    figure = go.Figure([go.Bar(name=CLASS_NAMES[cls], x=[f.file for f in slide.fields],
                               y=[f.found[cls] for f in slide.fields]) for cls in ("RBC", "PLT")])
    figure.update_layout(barmode="group", height=300, margin={"t": 10, "l": 0, "r": 0, "b": 10},
                         yaxis_title="found per field")
    right.plotly_chart(figure, key=f"{key}-chart")
    if slide.overlaps:
        with st.expander(f"{len(slide.overlaps)} overlap{'s' if len(slide.overlaps) != 1 else ''} between fields"):
            st.dataframe([{"field": o.first, "overlaps": o.second, "offset": f"({o.dx:+.0f}, {o.dy:+.0f}) px",
                           "shared": f"{o.overlap:.0%}", "agreement": round(o.agreement, 3)}
                          for o in slide.overlaps], hide_index=True, key=f"{key}-overlaps")


def _spread(spread) -> str:
    return f"{spread.mean:.1f}" + ("" if spread.sd is None else f" ± {spread.sd:.1f}")


def open_upload_image(content: bytes, name: str, at_least: int | None = None) -> Image.Image | None:
    """An uploaded image (``at_least``: see ``open_image``), or None after saying in words why it cannot be read."""
    try:
        return open_image(content, name, at_least=at_least)
    except InputError as error:
        st.error(str(error))
        return None
