"""Review page: confirm or reclassify the cells of an analysis, one click or one key per cell; sign off."""

import streamlit as st

from bloodcells import report
from bloodcells.taxonomy import default_tree
from ui.common import choose_cells_analysis, one_of, page, require_store, reviewer_name
from ui.keyboard_review import changed_since, changes, cursor_key, keyboard_review, record_change, undo_button
from ui.results import cell_image_bytes
from ui.signoff import attempt, locked_notice, show_refusal, signoff_panel

PAGE_SIZE = 24  # cells shown per class before "Show more"
QUICK_ALTERNATIVES = 2  # tree neighbours offered as one-click buttons beside "confirm" and "unidentified"

page("Review")
st.title("Review")
tree = default_tree()
store = require_store()
reviewer = reviewer_name()

show_refusal()  # first: a click on a cell of an analysis deleted since leaves nothing else to show
analysis = choose_cells_analysis(store, "review", "There is nothing to review yet: classify a zip of cells first.")
if analysis is None:
    st.stop()
predictions = analysis.predictions
locked = analysis.signed_off is not None

if not reviewer:
    st.warning("Enter your name in the sidebar: each review records who made it.")
locked_notice(analysis)


def apply_review(prediction_id: int, code: str, seen: int | None) -> None:
    """``seen``: the cell's latest review as drawn: a colleague's review since is said, not overwritten."""
    if (review := attempt(store.review, prediction_id, code, reviewer, seen=seen)) is not None:
        record_change(analysis.id, prediction_id, review)


def apply_other(prediction_id: int, seen: int | None) -> None:
    code = st.session_state[f"other_{prediction_id}"]
    if code:
        apply_review(prediction_id, code, seen)
        st.session_state.pop("other_open", None)  # closed; opened again, it starts at "other…"


# -- counts that follow the reviews ---------------------------------------------------------------
before = {row.code: row.count for row in report.differential([p.code for p in predictions], tree)}
now = {row.code: row.count for row in report.differential([p.final_code for p in predictions], tree)}
done = sum(1 for p in predictions if p.reviewed)
summary, counts = st.columns([1, 3])
summary.metric("Reviewed", f"{done} of {len(predictions)}")
summary.metric("Needs review", sum(1 for p in predictions if p.needs_review and not p.reviewed))
# Folded while reviewing with the keyboard: at 1366x768 its rows pushed the cell being reviewed below the
# fold, and keys pressed at once changed a cell the reviewer could not see.
with counts.expander("Cells per type: predicted, now, change",
                     expanded=st.session_state.get("review_mode", "mouse") != "keyboard"):
    st.dataframe([{"code": code, "type": tree[code].title, "predicted": before.get(code, 0), "now": now.get(code, 0),
                   "change": now.get(code, 0) - before.get(code, 0)}
                  for code in (n.code for n in tree.root.walk()) if code in before or code in now],
                 hide_index=True, key="review_counts")

signoff_panel(store, analysis)
# Beside the download it is for: above the sign-off panel it read as a setting of the report
export, only = st.columns([3, 2], vertical_alignment="center")
only_reviewed = only.toggle("Only cells a person reviewed", value=True, key="export_reviewed_only")


def corrected_labels() -> bytes:
    fresh = store.get_analysis(analysis.id)
    if only_reviewed:
        fresh.predictions = [p for p in fresh.predictions if p.reviewed]
    return report.labelled_zip(report.reviewed_cells(store, fresh))


export.download_button("Download the cells with their types (a zip of folders by type, to train on)",
                       corrected_labels, file_name=f"labels-analysis-{analysis.id}.zip", mime="application/zip",
                       icon=":material/download:", key="export_labels", disabled=only_reviewed and done == 0,
                       help="For `bloodcells train` or the Training page: one folder per cell type.")

# -- the cells, grouped by predicted class: a gallery (mouse) or one at a time (keyboard) ----------
filters, modes = st.columns([3, 2])
# "flagged", not "needs review": elsewhere "needs review" counts the flagged cells nobody reviewed yet, and
# this view keeps a flagged cell once reviewed, to be seen again. Each analysis has its own control, with its
# own default: one control's state cleared for the next analysis left the browser showing (and sending back
# at the next click) the old choice, and the view changed under the pointer.
view_from = f"review_view_from-{analysis.id}"  # session key: this session's changes before the view was chosen


def view_chosen() -> None:
    st.session_state[view_from] = changes(analysis.id)
    st.session_state.pop(cursor_key(analysis.id), None)  # a new view starts at its first cell


show = one_of("Cells", ["flagged", "not reviewed yet", "all"], container=filters,
              on_change=view_chosen,
              default="flagged" if any(p.needs_review for p in predictions) else "all",
              key=f"review_filter-{analysis.id}", help="Flagged: under the confidence threshold, "
              "reviewed or not. Not reviewed yet: every cell nobody reviewed, flagged or not.")
mode = one_of("Review with", ["mouse", "keyboard"], default="mouse", key="review_mode", container=modes,
              help="Keyboard: one cell at a time, a key per cell type, ← → to move.")
tree_order = {node.code: n for n, node in enumerate(tree.root.walk())}
ordered = sorted(predictions, key=lambda p: (tree_order[p.code], p.id))
# With the mouse, a cell reviewed in "not reviewed yet" stays in its place until the view is chosen again:
# gone at once, the cards after it moved under the pointer, and a second click confirmed a cell never seen.
kept = changed_since(analysis.id, st.session_state.get(view_from, 0)) if mode == "mouse" else set()
selected = [p for p in ordered
            if show == "all" or (show == "flagged" and p.needs_review)
            or (show == "not reviewed yet" and (not p.reviewed or p.id in kept))]
if not selected:
    st.success("No cell left in this view.")
if mode == "keyboard":
    keyboard_review(store, analysis, ordered, selected, reviewer, tree, locked)
    st.stop()
undo_button(store, analysis.id, reviewer, not reviewer or locked, "review_undo")
groups: dict[str, list] = {}
for prediction in selected:
    groups.setdefault(prediction.code, []).append(prediction)
all_codes = [node.code for node in tree.root.walk() if node.parent is not None]


def label(code: str) -> str:
    return f"{code} · {tree[code].title}"


for code in (node.code for node in tree.root.walk()):
    if code not in groups:
        continue
    cells = groups[code]
    alternatives = [c for c in report.review_choices(code, tree) if c != report.UNIDENTIFIED][:QUICK_ALTERNATIVES]
    # one button per distinct code (the widget keys hold it): a cell predicted "not identifiable" gets
    # its "✓" and no second such button. Named, not only coded: a newcomer read "MYB", "MMZ" on the buttons
    # (the names were on hover only), where keyboard mode says "MYB · myelocyte"
    choices = {code: f"✓ {code}"} | {c: f"{c} · {tree[c].title}" for c in alternatives if c != code}
    choices.setdefault(report.UNIDENTIFIED, f"{report.UNIDENTIFIED} · {tree[report.UNIDENTIFIED].title}")
    st.subheader(f"Predicted {label(code)} ({len(cells)})")
    shown_key = f"shown_{analysis.id}_{code}"  # per analysis: another one opens at its first page
    shown = st.session_state.get(shown_key, PAGE_SIZE)
    grid = st.columns(4)
    for n, prediction in enumerate(cells[:shown]):
        with grid[n % 4].container(border=True, key=f"cell_{prediction.id}"):
            png = cell_image_bytes(store, prediction, 128)
            if png:
                st.image(png, width=128)
            final = prediction.final_code
            status = f"**now {label(final)}**" if prediction.reviewed else "not reviewed"
            st.caption(f"{prediction.filename} · {prediction.confidence:.2f} · {status}")
            with st.container(horizontal=True, gap="small"):
                for choice, text in choices.items():
                    st.button(text, key=f"set_{prediction.id}_{choice}", help=label(choice),
                              disabled=not reviewer or locked,
                              type="primary" if prediction.reviewed and final == choice else "secondary",
                              on_click=apply_review, args=(prediction.id, choice, prediction.last_review_id))
                # The list of every type opens for one cell at a time: a select box on each of hundreds of
                # cards made every click take seconds (Streamlit checks each widget against all the others).
                if st.session_state.get("other_open") != prediction.id:
                    st.button("other…", key=f"open_other_{prediction.id}", help="Any type of the tree",
                              disabled=not reviewer or locked, on_click=st.session_state.__setitem__,
                              args=("other_open", prediction.id))
            if st.session_state.get("other_open") == prediction.id:
                st.selectbox("Other type", [None, *all_codes], format_func=lambda c: "other…" if c is None else label(c),
                             key=f"other_{prediction.id}", label_visibility="collapsed", disabled=not reviewer or locked,
                             on_change=apply_other, args=(prediction.id, prediction.last_review_id))
    if len(cells) > shown and st.button(f"Show more ({len(cells) - shown} left)", key=f"more_{code}"):
        st.session_state[shown_key] = shown + PAGE_SIZE
        st.rerun()
