"""Detection page: drop smear fields; see every cell boxed, counted, and the white cells typed."""

import io

import streamlit as st

from bloodcells.detection import (
    CLASS_NAMES,
    DEFAULT_BOX_CONFIDENCE,
    DETECTOR_CLASSES,
    annotate,
    detect,
    reviewed_white_cells,
)
from bloodcells.inputs import InputImage, count_images, iter_inputs, open_image
from ui.common import page, remembered_analysis, require_store, reviewer_name, skipped_files
from ui.models import get_classifier, get_detector
from ui.progress import cancel_button, progress_bar
from ui.results import show_analysis, show_slide
from ui.uploads import ACCEPTED, upload_label, uploaded_source
from ui.work import run_safely

MAX_SHOWN_IMAGES = 50  # annotated images kept for display in the session; counts cover every image

page("Detection")
st.title("Detection")
st.caption("Drop smear field images (or a .zip of them). Every white cell, red cell and platelet is boxed "
           "and counted; each white cell is typed through the classifier tree. Saved as an analysis.")
store = require_store()
reviewer_name()  # who signs off or reopens an analysis shown here
confidence = st.sidebar.number_input("Minimum box confidence", 0.0, 1.0, DEFAULT_BOX_CONFIDENCE, step=0.05,
                                     format="%.3f", key="box_confidence",
                                     help="Boxes the detector is less sure of are left out.")
detector = get_detector()
classifier = get_classifier(required=False)
if classifier is None:
    st.info("No classifier tree is available, so white cells are counted but not typed.")

files = st.file_uploader("Smear images", accept_multiple_files=True, key="smear_upload", help=ACCEPTED)
slide_column, target_column = st.columns([3, 1])
slide_mode = slide_column.toggle(
    "One slide (fields of one smear)", key="slide_mode",
    help="Count the images as fields of one slide: fields that overlap are found and the cells they share counted "
         "once; the white-cell differential runs over the fields in order (a zip's order, or by name) until the "
         "target. Red cells and platelets per field, platelets to red cells.")
wbc_target = target_column.selectbox("White cells to count", [100, 200], key="wbc_target", disabled=not slide_mode)
if st.button("Detect", type="primary", disabled=not files, key="detect"):
    with cancel_button("cancel_detect"), run_safely("Detection") as outcome:
        with uploaded_source(files) as source, progress_bar("Finding cells…") as progress:
            total = count_images(source)  # the images in it ("3 of 1" for a zip named .jpg; notes.txt counted)
            result = detect(source, detector=detector, classifier=classifier,
                            type_white_cells=classifier is not None, confidence=confidence, store=store,
                            name=upload_label(files), progress=lambda done, _total: progress(done, total),
                            slide=slide_mode, wbc_target=wbc_target)
            images = {item.name: item.content for item in iter_inputs(source)
                      if isinstance(item, InputImage) and item.name in result.files[:MAX_SHOWN_IMAGES]}
        outcome.update(result=result, images=images, confidence=confidence)
    if outcome:
        st.session_state["detection"] = outcome
        st.session_state["analysis_id"] = outcome["result"].analysis_id
    else:  # its error stood over the last run's "Saved as analysis #6" and counts, as if they were its own
        st.session_state.pop("detection", None)

if st.session_state.pop("cancelled", False):
    st.session_state.pop("detection", None)
    st.info("Detection cancelled. Nothing half-done was kept: the analysis is marked as failed in History.")

shown = st.session_state.get("detection")
if not shown:
    st.stop()
result = shown["result"]
analysis = remembered_analysis(store, "detection", result.analysis_id, "detect again to see its cells")
if analysis is None:
    st.stop()
st.success(f"Saved as analysis #{result.analysis_id}: {len(result.boxes)} cells on {len(result.files)} "
           f"image{'s' if len(result.files) != 1 else ''}.")
if shown["confidence"] != confidence:  # the boxes shown were found at the confidence of that run
    st.info(f"These cells were found at a minimum box confidence of {shown['confidence']:.3f}; press **Detect** "
            f"to count them at {confidence:.3f} (a new analysis).")
skipped_files(result.problems)
for warning in result.warnings:
    st.warning(warning)
if result.typing_skipped:
    st.caption(f"White cells not typed: {result.typing_skipped}.")
if result.slide is not None:
    st.subheader("Slide")
    show_slide(result.slide, analysis, key=f"slide-{result.analysis_id}")

if shown["images"]:
    picked, classes_column = st.columns([2, 3])
    name = picked.selectbox("Image", list(shown["images"]), key="detection_image")
    classes = classes_column.pills("Show", list(DETECTOR_CLASSES), selection_mode="multi",
                                   default=list(DETECTOR_CLASSES), format_func=lambda c: CLASS_NAMES.get(c, c),
                                   key="detection_classes")
    if result.slide is not None:
        st.caption("Each field shows the cells counted on it: a cell that overlapping fields share is boxed on one.")
    boxes = [b for b in result.boxes if b.file == name]
    annotated = annotate(open_image(shown["images"][name], name), boxes, classes=classes,
                         reviewed=reviewed_white_cells(analysis))
    buffer = io.BytesIO()
    annotated.save(buffer, format="PNG")
    st.image(buffer.getvalue(), width="stretch" if annotated.width < 900 else "content", caption=f"{name}: " + ", ".join(
        f"{count} {CLASS_NAMES.get(cls, cls)}{'' if count == 1 else 's'}" for cls, count in result.counts(name).items()))
    st.download_button("Download annotated PNG", buffer.getvalue(), file_name=f"{name.rsplit('.', 1)[0]}-boxes.png",
                       mime="image/png", on_click="ignore", key="download_png", icon=":material/download:")

st.subheader("Cells counted once" if result.slide is not None else "Whole upload")
show_analysis(store, analysis, with_slide=False, with_notes=False)  # said above
