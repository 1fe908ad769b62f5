"""The count log: past differentials, one row each, filtered by category, date and person, as a table
and CSV (History shows it). No patient field: an analysis is named by its upload and a category.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from .clock import lab_days, lab_time, stamp
from .report import records_csv
from .signout import (
    APART,
    CLINICAL_ORDER,
    NOT_STATED,
    OTHERS,
    SIGNED,
    clinical_rows,
    report_specimen,
    signoff_status,
    slide_differential,
)
from .taxonomy import Tree, default_tree

LOG_LIMIT = 5000  # analyses one count log reads: a lab with more in the dates chosen narrows them
NO_CATEGORY = "(no category)"  # how an analysis never signed with a category is filtered and shown
COUNT_COLUMNS = [label for label, _ in CLINICAL_ORDER] + [OTHERS] + [label for label, _ in APART]


@dataclass
class LogEntry:
    """One past differential."""
    analysis_id: int
    created_at: datetime
    name: str
    kind: str
    category: str
    specimen: str  # as its report counts it (``signout.report_specimen``), or "not stated"
    reviewers: list[str]  # who changed or confirmed its cells
    signers: list[str]  # who signed it off
    status: str  # bloodcells.signout.signoff_status
    signed_at: datetime | None  # its latest sign-off
    counted: int  # cells in the differential (platelets, smudge, not identifiable, artefacts, a blood film's erythroblasts apart)
    counts: dict[str, int]  # every COUNT_COLUMNS label

    @property
    def people(self) -> set[str]:
        return {*self.reviewers, *self.signers}


def log_dates(store) -> tuple[date, date] | None:
    """The lab's dates of the first and the last finished analysis, or None when there is none."""
    span = store.analysis_span(done=True)
    return None if span is None else (lab_time(span[0]).date(), lab_time(span[1]).date())


def count_log(store, tree: Tree | None = None, start: date | None = None, end: date | None = None,
              limit: int | None = None) -> list[LogEntry]:
    """Every finished analysis with a differential (cells, or white cells typed on smear fields)
    made from ``start`` to ``end`` (the lab's dates, inclusive; the newest ``limit``), newest first:
    its category and status from its sign-offs, its counts in clinical order. ``limit``: LOG_LIMIT."""
    tree = tree or default_tree()
    analyses = store.list_analyses(limit=limit or LOG_LIMIT, done=True, made=lab_days(*_dates(start, end)))
    ids = [a.id for a in analyses]
    codes, signoffs = store.final_code_counts(ids), store.signoffs(ids)
    reviewers, results = store.reviewers(ids), store.result_counts(ids)
    entries = []
    for analysis in analyses:
        # a slide stored before its counted white cells were kept as cells: the white cells its summary counted
        if not results[analysis.id].cells and (slide := slide_differential(analysis.summary)):
            codes[analysis.id] = slide.codes
        if not codes[analysis.id]:
            continue
        events = signoffs[analysis.id]
        signed = [e for e in events if e.action == SIGNED]
        specimen = report_specimen(events, analysis.kind)
        rows, apart, counted = clinical_rows(codes[analysis.id].elements(), tree, specimen=specimen)
        entries.append(LogEntry(
            analysis_id=analysis.id, created_at=lab_time(analysis.created_at), name=analysis.name, kind=analysis.kind,
            category=signed[-1].category if signed and signed[-1].category else NO_CATEGORY,
            specimen=specimen or NOT_STATED,
            reviewers=reviewers[analysis.id], signers=sorted({e.person for e in signed}),
            status=signoff_status(events, results[analysis.id].amendments),
            signed_at=lab_time(signed[-1].created_at) if signed else None, counted=counted,
            counts=dict.fromkeys(COUNT_COLUMNS, 0) | {row.label: row.count for row in [*rows, *apart]}))
    return entries


def log_is_cut(store, start: date | None = None, end: date | None = None, limit: int | None = None) -> bool:
    """Whether more finished analyses were made in these dates than ``count_log`` reads."""
    return store.count_analyses(done=True, made=lab_days(*_dates(start, end))) > (limit or LOG_LIMIT)


def filter_log(entries: Iterable[LogEntry], *, categories: Iterable[str] = (), start: date | None = None,
               end: date | None = None, people: Iterable[str] = ()) -> list[LogEntry]:
    """The entries in any of ``categories``, made from ``start`` to ``end`` (inclusive dates), that
    any of ``people`` reviewed or signed; an empty choice does not filter."""
    start, end = _dates(start, end)
    categories, people = set(categories), set(people)
    return [e for e in entries
            if (not categories or e.category in categories)
            and (start is None or e.created_at.date() >= start) and (end is None or e.created_at.date() <= end)
            and (not people or e.people & people)]


def log_rows(entries: Iterable[LogEntry]) -> list[dict]:
    """The count log's table (and CSV): one flat row per entry, counts in clinical order."""
    return [{"id": e.analysis_id, "date": stamp(e.created_at), "name": e.name, "kind": e.kind,
             "category": e.category, "specimen": e.specimen, "reviewers": ", ".join(e.reviewers), "signed by": ", ".join(e.signers),
             "status": e.status, "signed": stamp(e.signed_at) if e.signed_at else "",
             "cells counted": e.counted, **{label: e.counts[label] for label in COUNT_COLUMNS}}
            for e in entries]


def log_csv(entries: Iterable[LogEntry]) -> bytes:
    """The count log as CSV (UTF-8, one header row), the columns of ``log_rows``."""
    return records_csv(log_rows(entries))


def _dates(start: date | None, end: date | None) -> tuple[date | None, date | None]:
    if start and end and start > end:
        raise ValueError(f"the dates run backwards: {start} is after {end}")
    return start, end
