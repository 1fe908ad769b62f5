"""Training from the app: live curves while ``train_tree`` runs, the finished curves and the confusion matrix."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st


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
    """Callbacks for ``train_tree``: ``log`` shows the latest log lines, ``on_epoch`` redraws the loss
    and accuracy curves after every epoch."""

    def __init__(self):
        self.history: dict[str, list[dict]] = {}
        self.lines: list[str] = []
        left, right = st.columns(2)
        self.loss, self.accuracy = left.empty(), right.empty()
        self.text = st.empty()

    def log(self, line: str) -> None:
        self.lines = [*self.lines[-7:], line]
        self.text.code("\n".join(self.lines), language=None)

    def on_epoch(self, network: str, record: dict) -> None:
        self.history.setdefault(network, []).append(record)
        epochs_done = sum(len(records) for records in self.history.values())  # a new chart id per update
        self.loss.plotly_chart(curves(self.history, "loss"), key=f"live_loss_{epochs_done}")
        self.accuracy.plotly_chart(curves(self.history, "accuracy"), key=f"live_accuracy_{epochs_done}")

    def clear(self) -> None:
        """Remove the live view (the finished run's curves are drawn from its report)."""
        for placeholder in (self.loss, self.accuracy, self.text):
            placeholder.empty()


def confusion_heatmap(scores, tree) -> go.Figure:
    """Rows: the true type; columns: the predicted one; each cell the number of held-out cells."""
    names = [f"{code} · {tree[code].title}" for code in scores.labels]
    counts = scores.matrix.tolist()
    figure = go.Figure(go.Heatmap(z=counts, x=names, y=names, colorscale="Reds", text=counts, texttemplate="%{text}",
                                  hovertemplate="true %{y}<br>predicted %{x}<br>%{z} cells<extra></extra>"))
    figure.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                         height=180 + 40 * len(names), margin={"t": 10, "b": 10, "l": 10, "r": 10})
    return figure

