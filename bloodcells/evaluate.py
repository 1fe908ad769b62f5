"""Evaluating a trained tree: per node and whole tree, per data source, across sites.

``evaluate`` scores only cells the models never saw (``split.json`` lists what training used),
prints accuracy, macro-F1 and a classification report per node and for the whole tree at leaf
level (also per source, e.g. PBC and Matek apart), and writes confusion matrices (CSV and PNG)
and training curves (PNG). ``compare`` trains backbones x modes and tabulates accuracy per node;
``cross_site`` trains on one source alone and scores the cell types it shares with another.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .classify import TreeClassifier
from .data import load_dataset, node_targets
from .spreadsheet import write_csv


@dataclass
class Scores:
    """Scores of one classifier (a node, or the whole tree at leaf level) on labelled cells."""
    name: str
    labels: list[str]
    truth: list[str]
    predicted: list[str]
    accuracy: float = 0.0
    # 95% Wilson interval of the accuracy: a few hundred test cells pin it down to a few points
    accuracy_interval: tuple[float, float] = (0.0, 0.0)
    macro_f1: float = 0.0
    per_class: dict[str, float] = field(default_factory=dict)  # recall = accuracy on that class
    report: str = ""
    matrix: np.ndarray | None = None

    @classmethod
    def of(cls, name: str, truth: Sequence[str], predicted: Sequence[str], order: Sequence[str]) -> Scores:
        from scipy.stats import binomtest
        from sklearn.metrics import classification_report, confusion_matrix, f1_score, recall_score

        labels = [c for c in order if c in set(truth) | set(predicted)]
        scores = cls(name, labels, list(truth), list(predicted))
        if not truth:
            return scores
        present = [c for c in labels if c in set(truth)]
        right = sum(t == p for t, p in zip(truth, predicted, strict=True))
        scores.accuracy = right / len(truth)
        interval = binomtest(right, len(truth)).proportion_ci(0.95, method="wilson")
        scores.accuracy_interval = (float(interval.low), float(interval.high))
        scores.macro_f1 = float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0))
        scores.report = classification_report(truth, predicted, labels=labels, zero_division=0, digits=3)
        scores.matrix = confusion_matrix(truth, predicted, labels=labels)
        recalls = recall_score(truth, predicted, labels=present, average=None)
        scores.per_class = {code: float(recall) for code, recall in zip(present, recalls, strict=True)}
        return scores

    def headline(self) -> str:
        """Accuracy with its 95% interval, and macro-F1: how every report states a score (none without a cell:
        "accuracy 0.000 (95% CI 0.000-0.000)" was printed for no cell at all)."""
        if not self.truth:
            return "no cell to score"
        low, high = self.accuracy_interval
        return f"accuracy {self.accuracy:.3f} (95% CI {low:.3f}-{high:.3f}), macro-F1 {self.macro_f1:.3f}"

    def summary(self) -> str:
        return f"{self.name:<24} n={len(self.truth):<6} {self.headline()}"


@dataclass
class Evaluation:
    nodes: dict[str, Scores] = field(default_factory=dict)
    tree: Scores | None = None
    by_source: dict[str, Scores] = field(default_factory=dict)
    merged: dict[str, Scores] = field(default_factory=dict)  # per source, cell types merged up to ``at``
    cells: int = 0
    skipped_seen: int = 0
    flagged: float = float("nan")  # share of leaf-labelled cells below the review threshold
    unflagged_accuracy: float = float("nan")  # accuracy of the cells not flagged for review
    files: list[Path] = field(default_factory=list)

    def lineage_figures(self) -> dict | None:
        """The whole tree's accuracy, macro-F1, cells and per-class accuracy, as a model version records them."""
        if self.tree is None or not self.tree.truth:
            return None
        return {"accuracy": round(self.tree.accuracy, 4), "macro_f1": round(self.tree.macro_f1, 4),
                "cells": len(self.tree.truth), "per_class": {c: round(a, 4) for c, a in self.tree.per_class.items()}}


def evaluate(sources: Sequence[str | Path], models_dir: str | Path | None = None, *,
             out_dir: str | Path | None = None, unseen_only: bool = True, restrict_to: Sequence[str] | None = None,
             classifier: TreeClassifier | None = None, at: Sequence[str] | None = None,
             log: Callable[[str], None] = print) -> Evaluation:
    """Score the tree in ``models_dir`` on labelled ``sources`` (only unseen cells by default).

    ``at``: tree codes to score again with every cell type merged into the listed code above it
    (e.g. PBC's eight classes: a myelocyte called a metamyelocyte is right as "ig", MYI).
    """
    classifier = classifier or TreeClassifier.load(models_dir)
    tree = classifier.tree
    merge = merger(tree, at) if at else None  # before the slow part: an unknown code fails at once
    dataset = load_dataset(sources, tree, classifier.input_size)
    keep = np.arange(len(dataset))
    seen = _seen_digests(classifier.models_dir) if unseen_only else set()
    if seen:
        keep = np.asarray([i for i in keep if dataset.digests[i][:16] not in seen], dtype=int)
    skipped_seen = len(dataset) - len(keep)
    if restrict_to:
        allowed = set(restrict_to)
        keep = np.asarray([i for i in keep if dataset.labels[i] in allowed], dtype=int)
    dataset = dataset.subset(keep)
    if not len(dataset):
        log(f"no {'unseen ' if unseen_only else ''}labelled cells to evaluate")
        return Evaluation(skipped_seen=skipped_seen)
    outcome = replace(score(classifier, dataset, merge, at), skipped_seen=skipped_seen)
    _print(outcome, log, unseen_only)
    if out_dir:
        outcome.files = _write_outputs(outcome, classifier, Path(out_dir))
        log("written: " + ", ".join(str(f) for f in outcome.files))
    return outcome


def score(classifier: TreeClassifier, dataset, merge: Callable[[str], str] | None = None,
          at: Sequence[str] = ()) -> Evaluation:
    """Scores of ``classifier`` on the labelled cells of ``dataset``: per node, the whole tree at
    leaf level, per source (and merged up to ``at`` with ``merge``), the share flagged for review."""
    tree = classifier.tree
    outcome = Evaluation(cells=len(dataset))
    order = [node.code for node in tree.root.walk()]
    results = classifier.classify_arrays(dataset.images)
    for code, model in classifier.nodes.items():
        targets = node_targets(tree, code, dataset.labels)
        if not targets:
            continue
        members = sorted(targets)
        probabilities = model.probabilities([dataset.images[i] for i in members])
        predicted = [model.classes[k] for k in probabilities.argmax(1)]
        outcome.nodes[code] = Scores.of(code, [targets[i] for i in members], predicted, order)
    leaf = [i for i, label in enumerate(dataset.labels) if tree[label].is_leaf]
    outcome.tree = Scores.of("tree (leaf level)", [dataset.labels[i] for i in leaf],
                             [results[i].code for i in leaf], order)
    if leaf:
        trusted = [i for i in leaf if not results[i].needs_review]
        outcome.flagged = 1 - len(trusted) / len(leaf)
        if trusted:
            outcome.unflagged_accuracy = float(np.mean([results[i].code == dataset.labels[i] for i in trusted]))
    for source in sorted(set(dataset.sources)):
        mine = [i for i in leaf if dataset.sources[i] == source]
        outcome.by_source[source] = Scores.of(source, [dataset.labels[i] for i in mine],
                                              [results[i].code for i in mine], order)
        if merge:
            outcome.merged[source] = Scores.of(f"{source} at {','.join(at)}",
                                               [merge(dataset.labels[i]) for i in mine],
                                               [merge(results[i].code) for i in mine], order)
    return outcome


def merger(tree, at: Sequence[str]) -> Callable[[str], str]:
    """code -> the nearest of ``at`` on its path from the root (the code itself if none)."""
    unknown = [code for code in at if code not in tree]
    if unknown:
        raise ValueError(f"--at: {', '.join(unknown)} not in tree {tree.name!r}")
    wanted = set(at)

    def merge(code: str) -> str:
        return next((node.code for node in reversed(tree.path(code)) if node.code in wanted), code)
    return merge


def _seen_digests(models_dir: Path) -> set[str]:
    split = models_dir / "split.json"
    return set(json.loads(split.read_text()).get("seen", [])) if split.is_file() else set()


def _print(outcome: Evaluation, log, unseen_only: bool) -> None:
    # --all scores the cells training used too: they were called "unseen"
    log(f"{outcome.cells} {'unseen ' if unseen_only else ''}cell{'' if outcome.cells == 1 else 's'}"
        + (f" ({outcome.skipped_seen} used in training left out)" if outcome.skipped_seen else "")
        + ("" if unseen_only else ", those training used among them"))
    log("per node (each node's model alone, on the cells below it):")
    for scores in outcome.nodes.values():
        log("  " + scores.summary())
    log("whole tree, leaf level:\n  " + outcome.tree.summary())
    log("  review: " + _review_line(outcome))
    log(outcome.tree.report)
    for scores in (*outcome.by_source.values(), *outcome.merged.values()):
        per_class = ", ".join(f"{c} {a:.2f}" for c, a in scores.per_class.items())
        log(f"  {scores.summary()}\n    accuracy per class: {per_class}")


def _review_line(outcome: Evaluation) -> str:
    """The share flagged for review and the accuracy of the rest, in words where there is no share
    (no cell of a leaf type) or no rest (every cell flagged): it read "nan% correct"."""
    if np.isnan(outcome.flagged):
        return "no cell of a leaf type to count"
    if np.isnan(outcome.unflagged_accuracy):
        return "every cell flagged (none left unflagged to score)"
    return (f"{outcome.flagged:.1%} of cells flagged; cells not flagged are "
            f"{outcome.unflagged_accuracy:.1%} correct")


def _write_outputs(outcome: Evaluation, classifier: TreeClassifier, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for key, scores in [("tree", outcome.tree), *outcome.nodes.items()]:
        if scores is None or scores.matrix is None:
            continue
        table = write_csv(out_dir / f"confusion_{key}.csv", ["true \\ predicted", *scores.labels],
                          ([label, *row.tolist()] for label, row in zip(scores.labels, scores.matrix, strict=True)))
        figure, axes = plt.subplots(figsize=(1.2 + 0.5 * len(scores.labels), 1 + 0.5 * len(scores.labels)))
        axes.imshow(scores.matrix, cmap="Blues")
        axes.set_xticks(range(len(scores.labels)), scores.labels, rotation=90)
        axes.set_yticks(range(len(scores.labels)), scores.labels)
        for (r, c), value in np.ndenumerate(scores.matrix):
            if value:
                axes.text(c, r, str(value), ha="center", va="center", fontsize=7)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{scores.name}: accuracy {scores.accuracy:.3f}")
        figure.tight_layout()
        figure.savefig(out_dir / f"confusion_{key}.png", dpi=110)
        plt.close(figure)
        files += [table, out_dir / f"confusion_{key}.png"]
    histories = {code: node.metrics.get("history", []) for code, node in classifier.nodes.items()}
    if any(histories.values()):
        figure, grid = plt.subplots(2, len(histories), figsize=(3 * len(histories), 5), squeeze=False)
        for column, (code, history) in enumerate(histories.items()):
            epochs = [h["epoch"] for h in history]
            for row, metric in enumerate(("loss", "accuracy")):
                axes = grid[row][column]
                for split, label in (("train", "train"), ("val", "validation")):
                    # a shared trunk's heads record validation only (their training pass is the trunk's)
                    if history and f"{split}_{metric}" in history[0]:
                        axes.plot(epochs, [h[f"{split}_{metric}"] for h in history], label=label)
                axes.set_title(f"{code} {metric}")
                axes.set_xlabel("epoch")
        grid[0][0].legend()
        figure.tight_layout()
        figure.savefig(out_dir / "training_curves.png", dpi=100)
        plt.close(figure)
        files.append(out_dir / "training_curves.png")
    return files


# -- experiments ------------------------------------------------------------------------------
@dataclass
class ComparisonRow:
    backbone: str
    mode: str
    node_accuracy: dict[str, float]
    tree_accuracy: float
    error: str | None = None
    seconds: float = float("nan")  # training time


def compare(sources: Sequence[str | Path], backbones: Sequence[str], modes: Sequence[str], config, *,
            tree=None, work_dir: str | Path | None = None, log: Callable[[str], None] = print) -> list[ComparisonRow]:
    """Train every backbone x mode on ``sources`` and score each on the held-out test cells."""
    from .backbones import PretrainedWeightsError
    from .train import train_tree

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(work_dir or scratch)
        for backbone in backbones:
            for mode in modes:
                folder = base / f"{backbone}-{mode.replace('+', '-')}"
                try:
                    trained = train_tree(sources, folder, tree=tree,
                                         config=replace(config, architecture=backbone, mode=mode),
                                         log=lambda _text: None)
                except PretrainedWeightsError as error:
                    rows.append(ComparisonRow(backbone, mode, {}, float("nan"), str(error).split(".")[0]))
                    log(f"{backbone} {mode}: skipped ({rows[-1].error})")
                    continue
                scores = evaluate(sources, folder, log=lambda _text: None)
                rows.append(ComparisonRow(backbone, mode, {c: s.accuracy for c, s in scores.nodes.items()},
                                          scores.tree.accuracy if scores.tree else float("nan"),
                                          seconds=trained.seconds))
                log(f"{backbone} {mode}: tree accuracy {rows[-1].tree_accuracy:.3f} "
                    f"({trained.seconds / 60:.1f} min)")
    return rows


def format_comparison(rows: Sequence[ComparisonRow]) -> str:
    nodes = sorted({code for row in rows for code in row.node_accuracy})
    header = f"{'backbone':<24} {'mode':<15} " + " ".join(f"{c:>6}" for c in nodes) + "   tree  train min"
    lines = [header]
    for row in rows:
        cells = " ".join(f"{row.node_accuracy[c]:>6.3f}" if c in row.node_accuracy else f"{'-':>6}" for c in nodes)
        lines.append(f"{row.backbone:<24} {row.mode:<15} {cells} {row.tree_accuracy:>6.3f} {row.seconds / 60:>10.1f}"
                     + (f"   ({row.error})" if row.error else ""))
    return "\n".join(lines)


@dataclass
class CrossSite:
    trained_on: str
    tested_on: str
    shared: list[str]
    home: Evaluation  # unseen cells of the training site
    away: Evaluation  # the other site's cells of the shared types


def cross_site(site_a: str | Path, site_b: str | Path, config, *, tree=None, work_dir: str | Path | None = None,
               log: Callable[[str], None] = print) -> list[CrossSite]:
    """Train on each site alone; score it on its own unseen cells and on the other site's shared types."""
    from .taxonomy import load_tree
    from .train import train_tree

    tree_obj = load_tree(tree) if not hasattr(tree, "nodes") else tree
    labels = {str(site): set(load_dataset([site], tree_obj, 8).labels) for site in (site_a, site_b)}
    shared = sorted(code for code in labels[str(site_a)] & labels[str(site_b)] if tree_obj[code].is_leaf)
    log(f"cell types both sites share: {', '.join(shared)}")
    outcomes = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(work_dir or scratch)
        for home, away in ((site_a, site_b), (site_a, site_b)[::-1]):
            folder = base / f"trained-on-{Path(home).name}"
            log(f"training on {home} alone")
            train_tree([home], folder, tree=tree, config=config, log=lambda _text: None)
            home_scores = evaluate([home], folder, restrict_to=shared, log=lambda _text: None)
            away_scores = evaluate([away], folder, restrict_to=shared, log=lambda _text: None)
            outcomes.append(CrossSite(Path(home).name, Path(away).name, shared, home_scores, away_scores))
            log(format_cross_site(outcomes[-1]))
    return outcomes


def format_cross_site(result: CrossSite) -> str:
    def line(label, scores: Evaluation):
        tree = scores.tree
        if tree is None:
            return f"  {label}: no cells"
        per_class = ", ".join(f"{c} {a:.2f}" for c, a in tree.per_class.items())
        return f"  {label}: {tree.headline()} (n={len(tree.truth)}; {per_class})"

    return (f"trained on {result.trained_on}, shared types {', '.join(result.shared)}:\n"
            + line(f"{result.trained_on} (unseen, same site)", result.home) + "\n"
            + line(f"{result.tested_on} (other site)", result.away))
