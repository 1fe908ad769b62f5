"""Training page sections: adapt the models to this lab from reviewed cells; the model versions, their
lineage, accept, discard and roll back."""

from __future__ import annotations

import streamlit as st

from bloodcells.adapt import AdaptConfig, adapt_from_reviews, replay_unavailable
from bloodcells.classify import ModelFileError
from bloodcells.clock import stamp
from bloodcells.report import analysis_overview
from bloodcells.store import Store
from bloodcells.taxonomy import default_tree
from bloodcells.versions import (
    accept_candidate,
    answers,
    can_roll_back,
    candidate_dir,
    current_dir,
    current_version,
    discard_candidate,
    list_versions,
    rollback,
    switch_log,
    use_version,
)
from ui.common import LISTED, find_analyses, listed_note
from ui.models import reload_models
from ui.progress import cancel_button, progress_bar
from ui.work import run_safely

SHIPPED_LABEL = "the shipped models"
SWITCHES = {"promote": "promoted (command line)", "accept": "accepted", "use": "put in use", "rollback": "rolled back"}


def adapt_section(store: Store, person: str) -> None:
    st.caption("The models learn this lab's camera and stain from the cells you reviewed (a reviewed cell's "
               "final type is its label). A share is held back to score the models before and after, and "
               "cells of the original training sources are mixed in so that they are not forgotten. The "
               "result is a candidate: nothing changes until you accept it below.")
    search = find_analyses("adapt_search")
    # a detection's reviewed white cells too: crops of this lab's own fields
    rows = analysis_overview(store, reviewed=True, limit=LISTED, search=search)
    listed_note(len(rows), search)
    if not rows:
        if not search:
            st.info("No analysis has reviewed cells yet: classify a zip of this lab's cells and review them "
                    "on the Review page first.")
        return
    labels = {row["id"]: f"#{row['id']} · {row['date']} · {row['name']} ({row['reviewed']} reviewed"
                         + (" white cells of smear fields)" if row["kind"] == "detection" else ")") for row in rows}
    chosen = st.multiselect("Analyses whose reviewed cells to learn from", list(labels), default=list(labels),
                            format_func=labels.__getitem__, key="adapt_analyses")
    left, right = st.columns(2)
    hold_out = left.slider("Held back to score before and after", 0.0, 0.5, AdaptConfig.hold_out, 0.05,
                           key="adapt_hold_out")
    epochs = right.number_input("Epochs of the shared network (0: only the per-node heads)", 0, 30,
                                AdaptConfig.epochs, key="adapt_epochs")
    if not person:
        st.warning("Enter your name in the sidebar: a new model version records who made it.")
    unavailable = replay_unavailable()
    if unavailable:
        st.warning(f"The cells the models were trained on are not on this server ({unavailable}): they will "
                   "learn from this lab's cells alone, and only this lab's held-back cells are scored. Cell "
                   "types this lab has not reviewed may be forgotten; compare the figures before accepting.")
    replay_per_label = 0 if unavailable else AdaptConfig.replay_per_label
    if st.button("Adapt the models to this lab", type="primary", disabled=not chosen or not person, key="adapt"):
        with cancel_button("cancel_adapt"), run_safely("Adapting the models") as outcome, \
                progress_bar("Adapting…") as progress:
            outcome["id"], _ = adapt_from_reviews(store, chosen, person, candidate_dir(), progress=progress,
                                                  config=AdaptConfig(hold_out=hold_out, epochs=int(epochs),
                                                                     replay_per_label=replay_per_label),
                                                  log=lambda _line: None)
        if outcome:
            st.session_state["adapted"] = outcome["id"]
    if st.session_state.pop("cancelled", False):
        st.info("Adaptation cancelled. The models in use were not touched.")
    if "adapted" in st.session_state:
        st.success(f"Candidate #{st.session_state['adapted']} is ready: compare its figures under "
                   "“Versions” and accept or discard it.")


def figures_table(figures: dict, kind: str = "adapted") -> list[dict]:
    """One row per scored set (the lab's held-back cells, the original test split) and moment; a tree
    trained on the Training page was scored on the uploaded cells it never saw."""
    names = {"lab": "uploaded cells it never saw" if kind == "trained" else "this lab's held-back cells",
             "original": "original sources' test cells"}
    table = []
    for part, name in names.items():
        for when in ("before", "after"):
            scores = (figures.get(when) or {}).get(part)
            if scores:
                table.append({"cells": name, "models": when, "accuracy": scores["accuracy"],
                              "macro-F1": scores["macro_f1"], "n": scores["cells"],
                              **{code: value for code, value in scores["per_class"].items()}})
    return table


def versions_section(store: Store, person: str) -> None:
    tree = default_tree().name
    try:
        in_use, earlier = current_version(tree), can_roll_back(tree)
    except ModelFileError as error:  # a damaged pointer file: named, with what to do; the other tasks work
        st.error(str(error))
        return
    st.markdown(f"In use: **{in_use or SHIPPED_LABEL}**. Every analysis records the version that made it "
                "(History, “models”).")
    if not person:  # Accept, Discard, Use and Roll back were greyed out with no reason given
        st.caption("Enter your name in the sidebar to accept, discard, switch or roll back: each is logged with it.")
    in_use_answers = _answers(current_dir(tree))  # once, for every candidate below
    for row in store.list_model_versions(tree):
        title = (f"#{row.id} · {row.kind} by {row.started_by}, {stamp(row.started_at)} · {row.cells} cells"
                 f" · {row.status}" + (f" as {row.version}" if row.version else ""))
        with st.expander(title, expanded=row.status == "candidate"):
            st.caption(f"From analyses {', '.join(f'#{a}' for a in row.analyses) or '—'}; base models "
                       + (", ".join(f"{node} {sha[:8]}" for node, sha in row.base.items()) or "—")
                       + (f"; {row.status} by {row.decided_by}, {stamp(row.decided_at)}"
                          if row.decided_by else ""))
            table = figures_table(row.figures, row.kind)
            if table:
                # every row's columns: a type only the "after" row has (EBO, MYB...) went unformatted (0.9231)
                st.dataframe(table, hide_index=True, key=f"figures_{row.id}",
                             column_config={c: st.column_config.NumberColumn(format="%.3f")
                                            for c in dict.fromkeys(k for r in table for k in r)
                                            if c not in ("cells", "models", "n")})
            if row.status == "candidate":
                # a tree trained on PBC's 7 classes was accepted in one click: no page found blasts after it
                if (theirs := _answers(row.folder)) and (lost := in_use_answers - theirs):
                    named = ", ".join(f"{default_tree()[code].title} ({code})" for code in sorted(lost))
                    st.warning(f"These models cannot answer {named}, which the models in use can: cells of those "
                               "types would be called something else.")
                # callbacks: a click runs even when someone decided meanwhile (the rerun no longer draws the
                # button, and a click checked in the page's body did nothing, in silence)
                accept, discard = st.columns(2)
                accept.button("Accept: use these models everywhere", type="primary", disabled=not person,
                              key=f"accept_{row.id}", on_click=_decide, args=(store, row.id, person, True))
                discard.button("Discard", disabled=not person, key=f"discard_{row.id}", on_click=_decide,
                               args=(store, row.id, person, False))
    versions = list_versions(tree)
    left, right = st.columns(2)
    if right.button("Roll back to the version in use before", disabled=not earlier or not person, key="rollback",
                    help=None if earlier else "No version was in use before this one."):
        with run_safely("Rolling back") as done:
            done["folder"] = rollback(tree, by=person)
        if done:
            _switched(f"Rolled back: {current_version(tree) or SHIPPED_LABEL} is in use.")
    options = [None, *versions]
    # keyed by the version in use: a switch (a rollback, an accepted version, another tab) redraws it at that
    # version; under one key it kept the old choice beside "In use", one click from switching back
    chosen = left.selectbox("Use a version", options, index=options.index(in_use) if in_use in options else 0,
                            format_func=lambda v: v or SHIPPED_LABEL, key=f"use_version-{in_use or ''}")
    if chosen != in_use and left.button("Use this version", key="use_version_button", disabled=not person):
        with run_safely("Switching versions") as done:
            done["folder"] = use_version(tree, chosen, by=person)
        if done:
            _switched(f"{chosen or SHIPPED_LABEL} is in use.")
    if "switched" in st.session_state:
        st.success(st.session_state.pop("switched"))
    if log := switch_log(tree):
        with st.expander(f"Switches of the version in use ({len(log)})"):
            st.dataframe([{"when": stamp(s["at"]), "by": s["by"], "how": SWITCHES[s["action"]],
                           "version": s["version"] or SHIPPED_LABEL} for s in log], hide_index=True, key="switch_log")


def _answers(folder) -> set[str]:
    """The cell types the tree in ``folder`` answers; none when it cannot be read (a candidate's folder removed
    meanwhile: its Accept says so)."""
    try:
        return answers(folder)
    except (OSError, ValueError, KeyError):
        return set()


def _decide(store: Store, model_version_id: int, person: str, accept: bool) -> None:
    """Accept or discard a candidate (a button's callback: what it did, or why not, is said on the page)."""
    with run_safely("Accepting the models" if accept else "Discarding the models") as done:
        if accept:
            done["folder"] = accept_candidate(store, model_version_id, person)
        else:
            discard_candidate(store, model_version_id, person)
            done["ok"] = True
    if done:
        _changed(f"Version {done['folder'].name} is in use; the previous one is kept for rollback."
                 if accept else f"Model version #{model_version_id} was discarded.")


def _switched(message: str) -> None:
    _changed(message)
    st.rerun()


def _changed(message: str) -> None:
    reload_models()
    st.session_state.pop("adapted", None)
    for key in [key for key in st.session_state if str(key).startswith("use_version-")]:
        del st.session_state[key]  # "Use a version" shows the version now in use
    st.session_state["switched"] = message
