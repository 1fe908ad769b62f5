"""Analyses: recording one as it runs (a sign of life while it does), storing its results at once
or marking it failed, listing, finding, counting and deleting them; mixed into ``Store``."""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import selectinload

from ..clock import stamp
from . import schema
from .errors import NotFound, StoreError
from .reviews import DIRECTION_CONTROLS, LINE_BREAKS, AnalysisLocked, signed_by
from .rows import AnalysisRun, DetectionRow, PredictionRow, ResultCounts, sha256_hex
from .schema import SIGNED, Analysis, Detection, Prediction, Review, Signoff, utcnow
from .search import fold, folded

log = logging.getLogger("bloodcells.store")

_LARGEST_ID = 2**63 - 1  # a BIGINT; SQLite's INTEGER holds the same
_BLOB_BATCH = 32  # images per blob transaction in finish_analysis


class AnalysisStore:
    """The analyses' operations; ``Store`` gives ``session``, ``locked``, ``put_blobs`` and the rest."""

    def start_analysis(self, name: str, kind: str, model_versions: dict | None = None) -> int:
        """Record that an analysis began (status ``running``, a first sign of life) and return its id."""
        with self.session() as session:
            # one form of its characters (NFC): a name from a Mac's zip comes decomposed, and MySQL finds it
            # only in the form people type
            now = utcnow()
            analysis = Analysis(name=_fitted(_one_line(unicodedata.normalize("NFC", name)), Analysis.name), kind=kind,
                                status="running", model_versions=model_versions or {}, created_at=now,
                                heartbeat_at=now)
            session.add(analysis)
            session.flush()
            return analysis.id

    @contextmanager
    def analysis(self, name: str, kind: str, model_versions: dict | None = None) -> Iterator[AnalysisRun]:
        """Record the analysis the block runs: ``running`` from the start, with a sign of life every
        ``HEARTBEAT`` while it runs; ``done`` with the run's results when the block ends (all of them
        or none); ``failed`` with the error on any exception, cancellation and Ctrl-C included, so that
        none stays ``running``. The error is re-raised. A process killed outside Python's reach
        (SIGKILL, a power cut) falls silent: its analysis counts as interrupted once ``SILENT_AFTER``
        has passed, and is marked failed the next time analyses are listed."""
        run = AnalysisRun(self.start_analysis(name, kind, model_versions))
        stop = threading.Event()
        heartbeat = threading.Thread(target=self._beat, args=(run.id, stop), daemon=True,
                                     name=f"bloodcells analysis {run.id} heartbeat")
        heartbeat.start()
        try:
            yield run
            self.finish_analysis(run.id, predictions=run.predictions, detections=run.detections,
                                 summary=run.summary)
        except BaseException as error:
            # an error without words (Ctrl-C, a SIGTERM) read "failed (KeyboardInterrupt: )"
            self.fail_analysis(run.id, f"{type(error).__name__}: {error}" if str(error) else
                               f"{type(error).__name__}: stopped before it finished")
            raise
        finally:
            stop.set()
            # a daemon: a beat hung on a lost database connection must not hold the run's end
            heartbeat.join(timeout=schema.HEARTBEAT.total_seconds())

    def _beat(self, analysis_id: int, stop: threading.Event) -> None:
        """Record a sign of life of a running analysis every HEARTBEAT until ``stop`` is set. A beat the
        database does not take (unreachable, locked by a long write, a pool out of connections) is tried
        again at the next one: the thread never dies of it, or the live run would count as interrupted.
        An analysis silent for SILENT_AFTER is not brought back (its process was paused meanwhile: its
        images may be gone, and it may already be marked failed)."""
        while not stop.wait(schema.HEARTBEAT.total_seconds()):
            try:
                with self._translate_errors(), self._sessions() as session, session.begin():
                    session.execute(update(Analysis).where(Analysis.id == analysis_id, Analysis.being_stored)
                                    .values(heartbeat_at=utcnow()))
            except Exception:  # noqa: BLE001 - logged; the next beat tries again
                log.warning("analysis %s: its sign of life was not recorded", analysis_id, exc_info=True)

    def _fail_interrupted(self) -> None:
        """Mark failed every analysis left ``running`` by a process that fell silent."""
        with self._translate_errors(), self._sessions() as session:
            silent = list(session.execute(select(Analysis.id, Analysis.heartbeat_at, Analysis.created_at).where(
                Analysis.status == "running", ~Analysis.being_stored)))
        for analysis_id, heartbeat_at, created_at in silent:
            self._fail(analysis_id, "interrupted: the process storing it stopped (its last sign of life: "
                       f"{stamp(heartbeat_at or created_at)}); nothing of it was stored")

    def finish_analysis(self, analysis_id: int, *, predictions: Iterable[PredictionRow] = (),
                        detections: Iterable[DetectionRow] = (), summary: dict | None = None) -> None:
        """Store every result of an analysis and mark it done: all its predictions or none.

        ``predictions`` are read once, as a stream. Their images go first, a batch at a time, in
        transactions of their own (a blob is content-addressed and may be shared, so one stored
        early is never half of anything); then every prediction, detection and the status in one
        transaction. Only the small rows are held in memory meanwhile, never the images. Refused
        (StoreError) when the analysis ended meanwhile: marked interrupted while its process was paused.
        """
        with self.session() as session:  # before any image is stored for nothing
            _check_still_running(session.get(Analysis, analysis_id), analysis_id)
        rows: list[tuple[PredictionRow, str | None]] = []
        blob_ids: dict[str, int] = {}
        pending: dict[str, bytes] = {}
        for row in predictions:
            digest = None
            if row.content is not None:
                digest = sha256_hex(row.content)
                if digest not in blob_ids:
                    pending[digest] = row.content
                row = replace(row, content=None)
            rows.append((row, digest))
            if len(pending) >= _BLOB_BATCH:
                blob_ids.update(self.put_blobs(pending))
                pending = {}
        if pending:
            blob_ids.update(self.put_blobs(pending))
        with self.session() as session:
            # the row held (MySQL) against a failure written meanwhile by a page listing analyses
            analysis = session.get(Analysis, analysis_id, with_for_update=True)
            _check_still_running(analysis, analysis_id)  # and still, once its images are stored
            for row, digest in rows:
                session.add(Prediction(analysis_id=analysis_id, blob_id=blob_ids[digest] if digest else None,
                                       filename=_fitted(row.filename, Prediction.filename), code=row.code, path=row.path,
                                       confidence=float(row.confidence), level_confidences=row.level_confidences,
                                       needs_review=bool(row.needs_review)))
            for row in detections:
                x1, y1, x2, y2 = (float(v) for v in row.box)
                session.add(Detection(analysis_id=analysis_id, filename=_fitted(row.filename, Detection.filename),
                                      class_code=row.class_code, score=float(row.score),
                                      x1=x1, y1=y1, x2=x2, y2=y2, code=row.code, path=row.path,
                                      sub_confidence=row.sub_confidence))
            analysis.status = "done"
            analysis.summary = summary or {}
            analysis.finished_at = utcnow()
        self.collect_unreferenced_images()

    def fail_analysis(self, analysis_id: int, error: str) -> None:
        """Mark a running analysis failed with its error; it keeps no partial results. One that ended
        meanwhile (marked interrupted while its process was paused) keeps its status and reason.

        When the database cannot be reached, the failure is kept and written by this Store's next
        transaction once it is back (and StoreError is raised as usual).
        """
        try:
            self._fail(analysis_id, error)
        except StoreError:
            with self._failures_lock:
                self._unrecorded_failures[analysis_id] = error
            raise

    def _fail(self, analysis_id: int, error: str) -> None:
        with self._translate_errors(), self._sessions() as session, session.begin():
            analysis = session.get(Analysis, analysis_id, with_for_update=True)  # not over a finish committed meanwhile
            if analysis is not None and analysis.status == "running":  # one that ended keeps its status
                session.execute(delete(Prediction).where(Prediction.analysis_id == analysis_id))
                session.execute(delete(Detection).where(Detection.analysis_id == analysis_id))
                analysis.status, analysis.error, analysis.finished_at = "failed", error[:4000], utcnow()
        self.collect_unreferenced_images()

    def _record_failures(self) -> None:
        with self._failures_lock:
            pending, self._unrecorded_failures = self._unrecorded_failures, {}
        for analysis_id, error in pending.items():
            try:
                self._fail(analysis_id, error)  # unless finished meanwhile
            except StoreError:  # still unreachable: kept for the next transaction
                with self._failures_lock:
                    self._unrecorded_failures.setdefault(analysis_id, error)

    def list_analyses(self, kind: str | None = None, limit: int = 200, search: str = "", reviewed: bool = False,
                      done: bool = False, made: tuple[datetime | None, datetime | None] = (None, None),
                      also: int | None = None, with_cells: bool = False) -> list[Analysis]:
        """The newest analyses, at most ``limit``, of ``kind``; ``reviewed``: only those with a reviewed
        cell; ``with_cells``: only those with cells (a classification's, or a detection's typed white cells);
        ``done``: only finished ones; ``made``: begun from the first (naive UTC) time to before
        the second. ``search`` keeps those whose name contains it, and the one whose id it is (``#12``
        or ``12``): how older analyses are found. ``also``: an analysis listed last when it meets the
        conditions but is older than the newest ``limit`` (the one a page has open)."""
        conditions = _analysis_conditions(kind, search, reviewed, done, made, with_cells)
        self._fail_interrupted()
        with self.session() as session:
            analyses = list(session.scalars(select(Analysis).where(*conditions).order_by(Analysis.id.desc())
                                            .limit(limit)))
            if also is not None and 0 < also <= _LARGEST_ID and also not in {a.id for a in analyses}:
                analyses += session.scalars(select(Analysis).where(Analysis.id == also, *conditions))
            return analyses

    def count_analyses(self, kind: str | None = None, search: str = "", reviewed: bool = False, done: bool = False,
                       made: tuple[datetime | None, datetime | None] = (None, None)) -> int:
        """How many analyses ``list_analyses`` would list without a limit."""
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(Analysis).where(
                *_analysis_conditions(kind, search, reviewed, done, made)))

    def analysis_span(self, done: bool = True) -> tuple[datetime, datetime] | None:
        """When the first and the last (finished) analysis began (naive UTC), or None when there is none."""
        with self.session() as session:
            first, last = session.execute(select(func.min(Analysis.created_at), func.max(Analysis.created_at))
                                          .where(*_analysis_conditions(done=done))).one()
        return None if first is None else (first, last)

    def get_analysis(self, analysis_id: int) -> Analysis:
        """An analysis with its predictions (and their reviews), detections and sign-offs loaded."""
        if not 0 < analysis_id <= _LARGEST_ID:  # no such id (one from a page's address: SQLite's OverflowError)
            raise NotFound(f"no analysis {analysis_id}")
        with self.session() as session:
            analysis = session.scalar(
                select(Analysis).where(Analysis.id == analysis_id).options(
                    selectinload(Analysis.predictions).selectinload(Prediction.reviews),
                    selectinload(Analysis.detections), selectinload(Analysis.signoffs)))
            if analysis is None:
                raise NotFound(f"no analysis {analysis_id}")
            return analysis

    def delete_analysis(self, analysis_id: int) -> None:
        """Delete an analysis with its results, reviews and sign-offs. Refused (AnalysisLocked) while
        it is signed off (a signed differential is the lab's record; reopen it first) and while it is
        being stored (its run would fail at the end, its images left behind)."""
        with self.locked(analysis_id) as (session, last):
            if last is not None and last.action == SIGNED:
                raise AnalysisLocked(f"analysis #{analysis_id} was signed off by {signed_by(last)}: reopen it to "
                                     "delete it")
            analysis = session.get(Analysis, analysis_id)
            if analysis is not None and analysis.being_stored:
                raise AnalysisLocked(f"analysis #{analysis_id} is still running (started {stamp(analysis.created_at)}): "
                                     "delete it once it has finished or failed")
            prediction_ids = select(Prediction.id).where(Prediction.analysis_id == analysis_id)
            session.execute(delete(Review).where(Review.prediction_id.in_(prediction_ids)))
            session.execute(delete(Signoff).where(Signoff.analysis_id == analysis_id))
            session.execute(delete(Prediction).where(Prediction.analysis_id == analysis_id))
            session.execute(delete(Detection).where(Detection.analysis_id == analysis_id))
            session.execute(delete(Analysis).where(Analysis.id == analysis_id))
        self.collect_unreferenced_images()

    def result_counts(self, analysis_ids: Iterable[int]) -> dict[int, ResultCounts]:
        """What each of ``analysis_ids`` holds (zeros for one with no results), counted in the database."""
        ids = list(analysis_ids)
        counts = {analysis_id: ResultCounts() for analysis_id in ids}
        by_analysis = {
            "cells": select(Prediction.analysis_id, func.count()).where(Prediction.analysis_id.in_(ids)),
            "needs_review": select(Prediction.analysis_id, func.count()).where(
                Prediction.analysis_id.in_(ids), Prediction.needs_review.is_(True), Prediction.reviewed_code.is_(None)),
            "reviewed": select(Prediction.analysis_id, func.count()).where(
                Prediction.analysis_id.in_(ids), Prediction.reviewed_code.is_not(None)),
            "amendments": select(Prediction.analysis_id, func.count()).join(Review, Review.prediction_id == Prediction.id)
            .where(Prediction.analysis_id.in_(ids), Review.reopening_id.is_not(None)),
            "boxes": select(Detection.analysis_id, func.count()).where(Detection.analysis_id.in_(ids)),
        }
        with self.session() as session:
            for name, query in by_analysis.items():
                for analysis_id, count in session.execute(query.group_by(query.selected_columns[0])):
                    setattr(counts[analysis_id], name, count)
        return counts


def _check_still_running(analysis: Analysis | None, analysis_id: int) -> None:
    if analysis is None:
        raise StoreError(f"analysis {analysis_id} does not exist (deleted meanwhile?)")
    if analysis.status != "running":  # marked interrupted while its process was paused: its images may be gone
        raise StoreError(f"analysis #{analysis_id} was marked {analysis.status} meanwhile ({analysis.error}); "
                         "run it again")
    if not analysis.being_stored:  # silent that long, not listed meanwhile: the same, not marked yet
        raise StoreError(f"analysis #{analysis_id} gave no sign of life for {schema.SILENT_AFTER} (was its "
                         "process paused?) and counts as interrupted: its images may be gone; run it again")


def _analysis_conditions(kind: str | None = None, search: str = "", reviewed: bool = False, done: bool = False,
                         made: tuple[datetime | None, datetime | None] = (None, None), with_cells: bool = False) -> list:
    """The WHERE conditions of ``Store.list_analyses`` and ``count_analyses``."""
    conditions = []
    if kind:
        conditions.append(Analysis.kind == kind)
    if with_cells:
        conditions.append(Analysis.predictions.any())
    if reviewed:
        conditions.append(Analysis.predictions.any(Prediction.reviewed_code.is_not(None)))
    if done:
        conditions.append(Analysis.status == "done")
    if made[0] is not None:
        conditions.append(Analysis.created_at >= made[0])
    if made[1] is not None:
        conditions.append(Analysis.created_at < made[1])
    if search := search.strip():
        named = folded(Analysis.name).contains(fold(search), autoescape=True)
        number = search.removeprefix("#")
        # a specimen number pasted as the search is no id when it is past what an id column holds
        is_id = number.isdecimal() and int(number) <= _LARGEST_ID
        conditions.append(or_(named, Analysis.id == int(number)) if is_id else named)
    return conditions


def _one_line(name: str) -> str:
    """An upload's name on one line of the pages and the report: its control characters (a tab or a
    line break in a file name) as spaces, direction overrides dropped (U+202E turned the date after
    the name around)."""
    return "".join(" " if unicodedata.category(c) == "Cc" or c in LINE_BREAKS else c
                   for c in name if c not in DIRECTION_CONTROLS)


def _fitted(text: str | None, column) -> str | None:
    """``text`` shortened in its middle to the length of ``column`` (a String column), keeping its start
    and its end (a file's type): MySQL refuses a longer value ("Data too long"), SQLite keeps it, and
    a name from a deep zip path or a long upload must not fail the whole analysis on either."""
    length = column.type.length
    if text is None or len(text) <= length:  # None: the database says what is wrong with it
        return text
    tail = (length - 1) // 2
    return f"{text[:length - 1 - tail]}…{text[len(text) - tail:]}"
