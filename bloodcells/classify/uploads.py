"""Classifying an upload (image, folder, zip or uploaded bytes) with a tree's classifier: its cells
streamed in batches, the analysis recorded in the store, and the results as counts and a CSV."""

from __future__ import annotations

import pickle
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .classifier import CellResult, TreeClassifier, load_classifier

TREE_VERSION = "tree version"  # the key of the tree's version id among an analysis's model versions


@dataclass
class ClassifiedCell:
    filename: str
    result: CellResult

    def __iter__(self):  # ``for filename, result in outcome.rows``
        return iter((self.filename, self.result))


@dataclass
class ClassificationResult:
    rows: list[ClassifiedCell] = field(default_factory=list)
    problems: list = field(default_factory=list)  # bloodcells.inputs.InputProblem
    analysis_id: int | None = None
    warnings: list[str] = field(default_factory=list)  # why the counts may not be trusted (copies of one image)

    def counts(self) -> dict[str, int]:
        """Cells per predicted cell type (code), most frequent first."""
        return dict(Counter(row.result.code for row in self.rows).most_common())

    def write_csv(self, path: str | Path) -> Path:
        """``file,code,name,path,confidence,needs_review``, one row per image, as the app's
        downloads (``spreadsheet``: UTF-8 with a byte-order mark, formulas written as text)."""
        from ..spreadsheet import write_csv

        return write_csv(path, ["file", "code", "name", "path", "confidence", "needs_review"],
                         ([row.filename, row.result.code, row.result.name, row.result.path,
                           f"{row.result.confidence:.4f}", str(row.result.needs_review).lower()] for row in self.rows))


def classify(source, *, classifier: TreeClassifier | None = None, store=None, name: str | None = None,
             progress: Callable[[int, int | None], None] | None = None,
             batch_size: int = 64, flips: bool = False) -> ClassificationResult:
    """Classify every cell image in ``source`` (image, folder, zip, or uploaded bytes).

    With a ``store``, the analysis is recorded (running -> done with every prediction and image,
    or failed with its error). Images are read and classified ``batch_size`` at a time.
    """
    from ..inputs import (
        InputError,
        InputImage,
        InputProblem,
        RepeatedImages,
        blank_image,
        check_source,
        count_images,
        is_image_name,
        iter_inputs,
        later_pages,
        none_readable,
        open_image,
        stored_problems,
    )
    from ..store import PredictionRow, record_analysis

    classifier = classifier or load_classifier()
    check_source(source)
    label = name or (Path(source).name if isinstance(source, str | Path) else "upload")
    outcome = ClassificationResult()
    total = count_images(source)
    # the spool is closed after the analysis block, whose end stores the predictions read back from it
    with (tempfile.TemporaryFile() as spool,
          record_analysis(store, label, "classification",
                          {TREE_VERSION: classifier.tree_version, **classifier.versions()}) as run):
        outcome.analysis_id = run.id
        batch: list[tuple[InputImage, object]] = []
        skipped_images = 0  # counted in ``total`` but not classified: the bar still reaches the end
        repeated = RepeatedImages()

        def report():
            if progress:  # ``total`` leaves out some files that are then skipped: the bar never passes its end
                done = len(outcome.rows) + skipped_images
                progress(done, None if total is None else max(total, done))

        def flush():
            results = classifier.classify_images([image for _, image in batch], batch_size, flips)
            for (item, _), result in zip(batch, results, strict=True):
                outcome.rows.append(ClassifiedCell(item.name, result))
                if store is not None:
                    pickle.dump(PredictionRow(item.name, result.code, result.path, result.confidence,
                                              result.level_confidences, result.needs_review, item.content),
                                spool)
            batch.clear()
            report()

        for item in iter_inputs(source, name=name):
            image = None
            if isinstance(item, InputProblem):
                outcome.problems.append(item)
                skipped_images += is_image_name(item.name)
            else:
                try:
                    image = open_image(item.content, item.name, at_least=classifier.input_size)
                except InputError as error:
                    outcome.problems.append(InputProblem(item.name, str(error).removeprefix(f"{item.name}: ")))
                    skipped_images += 1
                if image is not None and (blank := blank_image(image, item.name)):
                    outcome.problems.append(blank)
                    skipped_images, image = skipped_images + 1, None
            if image is None:
                if len(outcome.problems) % batch_size == 0:  # an upload of unreadable files moves the bar too
                    report()
                continue
            if pages := later_pages(image, item.name):
                outcome.problems.append(pages)
            repeated.add(item)
            batch.append((item, classifier.compact(image)))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        if not outcome.rows:  # images, none decodable: an error, not a finished analysis of 0 cells
            raise none_readable(label, [p for p in outcome.problems if is_image_name(p.name)])
        report()
        outcome.warnings += filter(None, [repeated.warning()])
        spool.seek(0)
        run.predictions = _unspool(spool)
        run.summary = {"counts": outcome.counts(), "cells": len(outcome.rows),
                       "needs_review": sum(r.result.needs_review for r in outcome.rows),
                       **stored_problems(outcome.problems), "warnings": outcome.warnings}
    return outcome


def _unspool(spool) -> Iterator:
    while True:
        try:
            yield pickle.load(spool)
        except EOFError:
            return
