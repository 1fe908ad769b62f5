"""Explanation page: what a model of the tree looks at, per level, with the attributes in words."""

import hashlib
import time

import streamlit as st

from bloodcells.classify import TREE_VERSION
from bloodcells.explain import METHODS, explain
from bloodcells.versions import folder_of
from ui.common import choose_cells_analysis, one_of, page, require_store, sentence
from ui.models import classifier_of, get_classifier, predicted_attributes
from ui.results import open_upload_image
from ui.uploads import ACCEPTED
from ui.work import run_safely

EVERY_LEVEL = "every level of the predicted path"
PREDICTED = "the predicted child"

page("Explanation")
st.title("Explanation")
st.caption("Which pixels made each model of the tree choose its answer: one heatmap per level, "
           "from the lineage down to the cell type.")
store = require_store()
classifier = get_classifier()
tree = classifier.tree

source = one_of("Cell", ["upload an image", "a cell from an analysis"], default="upload an image", key="explain_source")
# the file's bytes go to explain(): decoded as classification decodes them, and cached under the file's
# sha256 as the command line and the store key them (a stored cell's maps go with its image)
content, image_name = None, None
if source == "upload an image":
    upload = st.file_uploader("Cell image", key="explain_upload", help=ACCEPTED.replace(".zip, ", ""))
    if upload is not None:
        content, image_name = upload.getvalue(), upload.name
else:
    analysis = choose_cells_analysis(store, "explain", "No classified cells yet: classify a zip first, or upload "
                                                       "an image.")
    if analysis is None:
        st.stop()
    cells = [p for p in analysis.predictions if p.blob_id is not None]
    if not cells:
        st.info("This analysis kept no images.")
        st.stop()
    cell = st.selectbox("Cell", cells, key="explain_cell",
                        # the confidence is the model's, for its own answer: beside a reviewed type it read as the
                        # model's confidence in the reviewer's
                        format_func=lambda p: f"{p.filename} · {p.code} ({p.confidence:.2f})"
                                              + (f" · reviewed {p.final_code}" if p.reviewed else ""))
    content, image_name = store.read_blob(cell.blob_id), cell.filename
    # explained by the tree that gave the cell its answer: the tree in use (another version, accepted since)
    # said "monocyte, 0.61" under a caption of the model's "blast at 0.51"
    made_by = analysis.model_versions.get(TREE_VERSION)
    if made_by and made_by != classifier.tree_version:
        if (folder := folder_of(tree.name, made_by)) is not None:
            classifier = classifier_of(folder)
            tree = classifier.tree
            st.caption(f"Explained with the models that made this analysis (version {made_by}); the version in use "
                       "now may answer otherwise.")
        else:
            st.warning(f"The models that made this analysis (version {made_by}) are no longer on this server: the "
                       "maps are of the version in use, which may answer otherwise than the cell's stored answer.")
    if cell.reviewed:  # the maps explain the model's answer, which a reviewer changed
        def named(code: str) -> str:
            return f"{tree[code].title} ({code})" if code in tree else code

        st.caption(f"Reviewed as {named(cell.final_code)}; the model said {named(cell.code)} at "
                   f"{cell.confidence:.2f}: the maps explain the model's answer.")
image = None if content is None else open_upload_image(content, image_name, at_least=classifier.input_size)
image_key = None if content is None else hashlib.sha256(content).hexdigest()  # the same image is one explanation

nodes = [EVERY_LEVEL, *classifier.nodes]
left, middle, right = st.columns(3)
node = left.selectbox("Model (tree node)", nodes, key="explain_node",
                      format_func=lambda code: code if code == EVERY_LEVEL else
                      f"{code} · {tree[code].title} → {', '.join(classifier.nodes[code].classes)}")
target = None
if node != EVERY_LEVEL:
    # a string, not None, for the predicted child: a None option showed as Streamlit's "Choose an option"
    target = middle.selectbox("Explain the choice of", [PREDICTED, *classifier.nodes[node].classes],
                              key="explain_target",
                              format_func=lambda c: c if c == PREDICTED else f"{c} · {tree[c].title}")
    target = None if target == PREDICTED else target
method = right.selectbox("Method", list(METHODS), format_func=lambda m: METHODS[m].title, key="explain_method",
                         help="Grad-CAM shows the evidence the network pools: on held-out cells 0.78 (PBC) and 0.90 "
                              "(Matek) of its map lies on the cell. Integrated Gradients and Saliency are maps of "
                              "single pixels, noisy on these networks: on five PBC cells 11-35% and 4-52% of their "
                              "strongest pixels lay on the cell (Grad-CAM's: all). Occlusion and Integrated "
                              "Gradients take seconds a level.")

if image is None:
    st.stop()
# what the maps shown must be of: the tree's models too (their sha256), since another tree put in use
# (accepted on the Training page) explains the same cell differently
request = (image_key, node, target, method, tuple(classifier.versions().items()))
if st.button("Explain", type="primary", key="explain"):
    # Integrated Gradients and Occlusion took 8-17 s on every level with no sign of work
    with run_safely("Explanation") as outcome, st.spinner(f"Explaining with {METHODS[method].title}…"):
        started = time.perf_counter()
        levels = explain(content, classifier, method=method, node=None if node == EVERY_LEVEL else node,
                         target=target, store=store)
        result = classifier.classify_images([image])[0]
        outcome.update(request=request, levels=levels, result=result, image=image, name=image_name,
                       seconds=time.perf_counter() - started,
                       attributes=predicted_attributes(image, classifier))
    if outcome:
        st.session_state["explanation"] = outcome

shown = st.session_state.get("explanation")
if not shown or shown["request"] != request:  # another cell, node, method or tree than the maps were of
    st.image(image, caption=image_name, width=192)
    if shown:
        st.caption("Click Explain to see this cell with these choices.")
    st.stop()
result = shown["result"]
cell_column, maps_column = st.columns([1, 3])
with cell_column:
    st.image(shown["image"], caption=shown["name"], width=192)
    st.markdown(f"**{result.name}** ({result.code})  \n`{result.path}`")
    st.metric("Confidence", f"{result.confidence:.2f}",
              help="Below the review threshold: flagged for review on the Classification and Review pages."
              if result.needs_review else None)
    if result.needs_review:
        st.caption(f"Flagged for review: under the tree's review threshold ({classifier.review_threshold:.2f}).")
    st.metric("Time", f"{shown['seconds']:.2f} s")
    st.subheader("Morphology")
    attributes, text = shown["attributes"]
    if attributes:
        st.markdown(sentence(text))
        st.markdown("\n".join(f"- {name.replace('_', ' ')}: **{value}**" for name, value in attributes.items()))
    else:
        st.caption(f"No attributes in words: {text}")
with maps_column:
    columns = st.columns(max(len(shown["levels"]), 1))
    for column, level in zip(columns, shown["levels"], strict=False):
        column.image(level.overlay, caption=f"{tree[level.node].title} → {tree[level.target].title}")
