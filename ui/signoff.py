"""Signing off a differential (which locks its cells), reopening it to amend, and its report as PDF."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from bloodcells.clock import stamp
from bloodcells.signout import (
    AMENDED,
    REOPENED,
    SPECIMENS,
    TARGETS,
    SignedReportError,
    build_report,
    clinical_rows,
    differential_codes,
    report_specimen,
    signoff_lines,
    signoff_status,
    slide_differential,
    to_pdf,
)
from bloodcells.store import COMMENT_LENGTH, NAME_LENGTH, NotFound, ReviewError, Store, StoreError, signoff_text
from bloodcells.store.schema import PERIPHERAL_BLOOD, SIGNED

REFUSAL = "review_refusal"  # session key: why the last review was refused (shown at the top of the page)
PANEL_REFUSAL = "signoff_refusal"  # why the last sign-off or reopening was refused (shown in its open panel)
PANEL_RESET = "signoff_reset"  # why the panel's fields were refilled (a colleague signed or reopened meanwhile)
# the analyses whose panel stays open once it has said why something was refused, or was edited: per analysis (one
# open panel opened the next analysis's too, whose fields then pushed the cell under review below the fold)
PANEL_OPEN = "signoff_open"
PANEL_DRAWN = "signoff_drawn"  # the analysis whose panel the page drew last: the one its widgets' callbacks are of


def attempt(action: Callable, *args, **kwargs):
    """Run a store action from a widget callback and return its result. Callbacks run before the page
    is drawn, so a refusal (the analysis was signed off meanwhile, no name...) is kept for
    ``show_refusal`` to show, and None returned."""
    try:
        return action(*args, **kwargs)
    except (ReviewError, StoreError) as error:
        st.session_state[REFUSAL] = str(error)
        return None
    except NotFound:  # deleted meanwhile, e.g. on the History page in another tab ("no prediction 131 any more")
        st.session_state[REFUSAL] = "Not saved: the analysis was deleted meanwhile (in History, or in another tab)."
        return None


def show_refusal(key: str = REFUSAL) -> None:
    if message := st.session_state.pop(key, None):
        st.error(message)


def refuse_in_panel(message: str) -> None:
    """Say ``message`` in the sign-off panel, which stays open from then on (shown at the top of the page
    with the panel closed, it was far from the fields to correct; closed at the next keystroke, the field
    being corrected went with it)."""
    st.session_state[PANEL_REFUSAL] = message
    keep_open()


def keep_open(analysis_id: int | None = None) -> None:
    """An edit keeps the panel open: its first rerun after an analysis ran redrew it closed, the value
    being typed with it. A callback's: of the panel drawn last."""
    st.session_state.setdefault(PANEL_OPEN, set()).add(
        st.session_state.get(PANEL_DRAWN) if analysis_id is None else analysis_id)


def attempt_in_panel(action: Callable, *args, **kwargs) -> None:
    """``attempt`` for the sign-off panel's buttons: a refusal is said in the panel (``refuse_in_panel``)."""
    attempt(action, *args, **kwargs)
    if REFUSAL in st.session_state:
        refuse_in_panel(st.session_state.pop(REFUSAL))


def flagged_not_reviewed(analysis) -> int:
    """The cells flagged for review that nobody has reviewed (a detection's: its typed white cells')."""
    return sum(1 for p in analysis.predictions if p.needs_review and not p.reviewed)


def amendments(analysis) -> int:
    """How many cell changes were made while the analysis was reopened after a sign-off."""
    return sum(1 for p in analysis.predictions for r in p.reviews if r.reopening_id is not None)


def locked_notice(analysis) -> None:
    """Say that a signed-off analysis's cells are locked, and where to reopen it."""
    if signed := analysis.signed_off:
        st.info(f"Signed off by {signed.person} on {stamp(signed.created_at)}: its cells are locked. "
                "To change them, **Reopen to amend** under *Sign-off and report*.", icon=":material/lock:")


def shown_specimen(analysis) -> str | None:
    """The specimen a page counts an analysis's cells as: the one chosen in its sign-off panel while it is
    not signed off (as the draft report does: the page showed a marrow's count beside a blood film's draft),
    else its report's."""
    forget_fields_if_signed_elsewhere(analysis)
    chosen = st.session_state.get(f"report-specimen-{analysis.id}") if analysis.signed_off is None else None
    return chosen or report_specimen(analysis.signoffs, analysis.kind)


PANEL_FIELDS = ("report-specimen", "report-wbc", "report-target", "report-category", "report-comment",
                "sign-unreviewed", "reopen-reason")


def forget_fields_if_signed_elsewhere(analysis) -> None:
    """The panel's fields start again from the latest sign-off when one was made or undone since this session
    drew them: signed and reopened in another tab, this tab went on showing its own blank specimen, count and
    category, and its sign-off dropped the colleague's count and category from the amended report."""
    latest = analysis.signoffs[-1] if analysis.signoffs else None
    drawn = f"signoffs-drawn-{analysis.id}"
    if drawn in st.session_state and st.session_state[drawn] != (latest and latest.id):
        typed = [st.session_state.pop(f"{field}-{analysis.id}", None) for field in PANEL_FIELDS]
        # what this tab had typed is not kept: said, when someone else's sign-off or reopening replaced it
        if latest is not None and latest.person != st.session_state.get("reviewer") and any(
                isinstance(value, str) and value.strip() for value in typed):
            st.session_state[PANEL_RESET] = (f"{latest.person} {latest.action} this analysis meanwhile: the fields "
                                             "show what was signed, and what was typed here was not kept.")
            keep_open(analysis.id)
    st.session_state[drawn] = latest and latest.id


def signoff_panel(store: Store, analysis) -> None:
    """Sign off (white-cell count, target, specimen, category, comment), or reopen a signed analysis; the PDF."""
    person = st.session_state.get("reviewer", "")
    signed = analysis.signed_off
    status = signoff_status(analysis.signoffs, amendments(analysis))
    key = analysis.id
    forget_fields_if_signed_elsewhere(analysis)
    st.session_state[PANEL_DRAWN] = analysis.id
    with st.expander(f"Sign-off and report (PDF) · {status}", icon=":material/description:",
                     expanded=analysis.id in st.session_state.get(PANEL_OPEN, set())):
        show_refusal(PANEL_REFUSAL)
        if reset := st.session_state.pop(PANEL_RESET, None):
            st.warning(reset)
        draft_problem = None  # why the report of the fields as typed cannot be made
        if analysis.signoffs:
            st.caption("  \n".join(signoff_lines(analysis.signoffs)))
        if not person:
            st.caption("Enter your name in the sidebar to sign off or reopen.")
        if signed is not None:
            st.text_input("Reason for reopening", key=f"reopen-reason-{key}", on_change=keep_open,
                          help="Kept with the reopening.", max_chars=COMMENT_LENGTH)
            def reopen() -> None:  # the reason as it is at the click, which may follow an edit without Enter
                reason = st.session_state[f"reopen-reason-{key}"].strip()
                if not reason:  # the audit trail says why a signed record was changed
                    refuse_in_panel("Say why it is reopened: the reason is kept with the reopening.")
                    return
                attempt_in_panel(store.reopen, analysis.id, person, reason)

            st.button("Reopen to amend", key=f"reopen-{key}", icon=":material/lock_open:", disabled=not person,
                      on_click=reopen)

            def pdf() -> bytes:  # what was signed: its count, target, specimen, category and comment
                return to_pdf(build_report(store, analysis.id))
        else:
            last = next((s for s in reversed(analysis.signoffs) if s.action == SIGNED), None)
            left, middle, right = st.columns(3)
            # chosen, never assumed for cells (a marrow's and a blood film's reports count erythroblasts apart
            # or not); smear fields are blood films
            stated = report_specimen(analysis.signoffs, analysis.kind)
            specimen = left.selectbox("Specimen", SPECIMENS, key=f"report-specimen-{key}", on_change=keep_open,
                                      index=SPECIMENS.index(stated) if stated else None, placeholder="Choose one",
                                      help="A marrow's erythroblasts are in its differential, with the M:E ratio; "
                                           "a blood film's are counted apart, per 100 white cells.")
            blood_film = specimen == PERIPHERAL_BLOOD
            wbc = right.number_input("White-cell count (10^9/L), for absolute counts", 0.0, 999.0,
                                     (last.white_cell_count or 0.0) if last else 0.0, step=0.1, key=f"report-wbc-{key}",
                                     on_change=keep_open, disabled=not blood_film, help="A blood film's: the blood count's white cells (corrected "
                                     "for nucleated red cells). Leave at 0 when not known. A bone marrow has no "
                                     "absolute counts; choose the specimen first.")
            # 0: none (None would be the count signed before a reopening); a specimen not chosen yet counts as a
            # marrow's, whose erythroblasts got absolute counts in the draft PDF
            wbc = wbc if blood_film else 0.0
            slide = slide_differential(analysis.summary)
            counted_to = last.target if last else slide.target if slide else 200
            # a slide counted to a target of its own is reported against it (200 said "197 short" of a 3-cell count)
            targets = sorted({*TARGETS, counted_to}) if slide and counted_to == slide.target else TARGETS
            target = middle.selectbox("Cells to count", targets, key=f"report-target-{key}", on_change=keep_open,
                                      index=targets.index(counted_to if counted_to in targets else 200),
                                      help="The differential's target: the report says how many cells were counted "
                                           "against it, and by how many it fell short.")
            counted = clinical_rows(differential_codes(analysis), specimen=specimen)[2]
            if counted < target:  # signed with 18 of 200: only the PDF said so
                middle.caption(f"{counted} of {target} counted: the report will say the target was not reached "
                               f"({target - counted} short).")
            category = st.text_input("Category", last.category if last else "", key=f"report-category-{key}",
                                     on_change=keep_open, max_chars=NAME_LENGTH,
                                     help="How the count log groups it, e.g. routine, follow-up, a study. "
                                          "No patient names or identifiers.")
            comment = st.text_area("Comment", last.comment if last else "", key=f"report-comment-{key}",
                                   on_change=keep_open, max_chars=COMMENT_LENGTH, help="No patient names or identifiers.")
            try:  # what the report and a sign-off would refuse, said beside the fields (the PDF needs them)
                signoff_text(category, comment)
            except ReviewError as error:
                draft_problem = str(error)
                st.error(draft_problem)
            unconfirmed = False
            if flagged := flagged_not_reviewed(analysis):
                st.warning(f"{flagged} flagged cell{'s are' if flagged != 1 else ' is'} not reviewed yet.")
                # a sign-off with cells nobody looked at is a choice made on purpose, not a slip
                unconfirmed = not st.checkbox(f"Sign off with the {flagged} flagged cells not reviewed",
                                              key=f"sign-unreviewed-{key}", on_change=keep_open)

            if specimen is None:
                st.caption("Choose the specimen to sign off.")

            def sign() -> None:  # the inputs as they are at the click, which may follow an edit without Enter
                state = st.session_state
                if not state.get(f"report-specimen-{key}"):
                    refuse_in_panel("Not signed: choose the specimen (bone marrow or peripheral blood).")
                    return
                # counted again at the click: a colleague may have undone a review since the page was drawn
                unreviewed = store.result_counts([analysis.id])[analysis.id].needs_review
                if unreviewed and not state.get(f"sign-unreviewed-{key}"):
                    refuse_in_panel(f"Not signed: {unreviewed} flagged cells are not reviewed (a review was undone "
                                    "since this page was drawn?). Tick the box to sign off anyway.")
                    return
                attempt_in_panel(store.sign_off, analysis.id, person, category=state[f"report-category-{key}"],
                                 comment=state[f"report-comment-{key}"], target=state[f"report-target-{key}"],
                                 specimen=state[f"report-specimen-{key}"],
                                 white_cell_count=state[f"report-wbc-{key}"] or None
                                 if state[f"report-specimen-{key}"] == PERIPHERAL_BLOOD else None)

            st.button("Sign off the amended differential" if status == REOPENED else "Sign off", type="primary",
                      key=f"sign-{key}", icon=":material/verified:",
                      disabled=not person or unconfirmed or specimen is None, on_click=sign,
                      help="Records who and when with the category and comment; the cells are locked until reopened.")

            def pdf() -> bytes:  # made when the button is clicked, not on every rerun of the page
                try:
                    return to_pdf(build_report(store, analysis.id, white_cell_count=wbc, target=target,
                                               specimen=specimen, category=category, comment=comment))
                except SignedReportError:  # someone signed it off since this page was drawn: what they signed
                    return to_pdf(build_report(store, analysis.id))

        # the click reruns the page: when the analysis was deleted meanwhile, the download fails and the page says so
        st.download_button("Download report (PDF)", pdf, disabled=draft_problem is not None,
                           file_name=f"differential-{analysis.id}"
                           f"{'-amended' if status == AMENDED else ''}.pdf", mime="application/pdf",
                           key=f"report-pdf-{key}", icon=":material/download:")
