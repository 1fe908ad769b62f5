"""Training from the app: live curves while ``train_tree`` runs, and accepting the new models."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from bloodcells.settings import settings

# train_tree logs one line per epoch: "[NEU] epoch 2/15: train loss 0.412 acc 0.875 | val loss 0.390 acc 0.900 (3 s)"
EPOCH_LINE = re.compile(r"^\[(?P<node>[^\]]+)\] epoch (?P<epoch>\d+)/\d+: train loss (?P<train_loss>\S+) "
                        r"acc (?P<train_accuracy>\S+) \| val loss (?P<val_loss>\S+) acc (?P<val_accuracy>\S+)")


def curves(history: dict[str, list[dict]], measure: str) -> go.Figure:
    """Train and validation ``measure`` ("loss" or "accuracy") per epoch, one pair of lines per node."""
    figure = go.Figure()
    for node, records in history.items():
        epochs = [r["epoch"] for r in records]
        for split, dash in (("train", "dot"), ("val", "solid")):
            figure.add_scatter(x=epochs, y=[r[f"{split}_{measure}"] for r in records], mode="lines+markers",
                               name=f"{node} {split}", line={"dash": dash}, legendgroup=node)
    figure.update_layout(title=measure, xaxis_title="epoch", height=300, margin={"t": 40, "b": 10, "l": 10, "r": 10})
    return figure


class LiveCurves:
    """A ``log`` callback for ``train_tree``: redraws the loss and accuracy curves after every epoch
    and shows the latest log lines."""

    def __init__(self):
        self.history: dict[str, list[dict]] = {}
        self.lines: list[str] = []
        left, right = st.columns(2)
        self.loss, self.accuracy = left.empty(), right.empty()
        self.log = st.empty()

    def __call__(self, line: str) -> None:
        self.lines = [*self.lines[-7:], line]
        self.log.code("\n".join(self.lines), language=None)
        found = EPOCH_LINE.match(line)
        if not found:
            return
        record = {key: float(value) for key, value in found.groupdict().items() if key != "node"}
        record["epoch"] = int(record["epoch"])
        self.history.setdefault(found["node"], []).append(record)
        epochs_done = sum(len(records) for records in self.history.values())  # a new chart id per update
        self.loss.plotly_chart(curves(self.history, "loss"), key=f"live_loss_{epochs_done}")
        self.accuracy.plotly_chart(curves(self.history, "accuracy"), key=f"live_accuracy_{epochs_done}")

    def clear(self) -> None:
        """Remove the live view (the finished run's curves are drawn from its report)."""
        for placeholder in (self.loss, self.accuracy, self.log):
            placeholder.empty()


def confusion_heatmap(scores, tree) -> go.Figure:
    """Rows: the true type; columns: the predicted one; each cell the number of held-out cells."""
    names = [f"{code} · {tree[code].name}".replace("_", " ") for code in scores.labels]
    counts = scores.matrix.tolist()
    figure = go.Figure(go.Heatmap(z=counts, x=names, y=names, colorscale="Reds", text=counts, texttemplate="%{text}",
                                  hovertemplate="true %{y}<br>predicted %{x}<br>%{z} cells<extra></extra>"))
    figure.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                         height=180 + 40 * len(names), margin={"t": 10, "b": 10, "l": 10, "r": 10})
    return figure


def candidate_dir() -> Path:
    """A fresh folder for a training run's models, outside the models in use until accepted."""
    folder = settings().data_dir / "training" / time.strftime("%Y%m%d-%H%M%S")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def accept_models(candidate: Path, tree_name: str, store) -> Path:
    """Make the candidate tree the one every page uses; the previous one is kept beside it.

    The new folder is copied and verified next to the live one first, then swapped in by renames,
    so a failure half-way leaves the models in use untouched.
    """
    from bloodcells.classify import TreeClassifier
    from bloodcells.train import register_models

    target = settings().models_dir / "classifier" / tree_name
    incoming = target.with_name(f"{tree_name}.incoming")
    previous = target.with_name(f"{tree_name}.previous")
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(candidate, incoming)
    classifier = TreeClassifier.load(incoming)  # verifies every file's sha256 before anything moves
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
    incoming.rename(target)
    if store is not None:
        register_models(store, target, classifier.tree)
    return target
