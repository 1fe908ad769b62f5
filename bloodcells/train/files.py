"""A trained tree on disk: node files, their versions, the review threshold, registration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import CellDataset
from ..taxonomy import Tree
from .config import TrainConfig

if TYPE_CHECKING:
    from ..classify import TreeClassifier


def save_node(folder: Path, code: str, state: dict, metrics: dict, config: TrainConfig, fingerprint: str,
              trunk: Path | None = None) -> Path:
    """``<code>.safetensors`` (float16: half the size, no accuracy change at inference) + ``<code>.json``.

    With ``trunk`` (the shared trunk's metadata file), ``state`` is a head on that trunk, and the
    node's ``sha256`` covers both files: it names the whole network that answers for the node.
    Returns the metadata file.
    """
    import torch
    from safetensors.torch import save_file

    from ..store import sha256_file

    weights = folder / f"{code}.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(weights))
    digest = sha256_file(weights)
    metadata = {
        "code": code, "architecture": config.architecture, "input_size": config.input_size,
        "classes": metrics["classes"], "outputs": metrics["outputs"], "mean": metrics["mean"], "std": metrics["std"],
        "stain_norm": config.stain_norm, "weights": weights.name, "sha256": digest, "data_fingerprint": fingerprint,
        "mode": config.mode, "torch": torch.__version__,
        "metrics": {k: v for k, v in metrics.items() if k not in {"classes", "outputs", "mean", "std"}},
    }
    if trunk is not None:
        trunk_sha256 = json.loads(trunk.read_text())["sha256"]
        metadata |= {"trunk": trunk.name, "weights_sha256": digest, "sha256": network_sha256(trunk_sha256, digest)}
    write_json(folder / f"{code}.json", metadata)
    return folder / f"{code}.json"


def network_sha256(trunk_sha256: str, head_sha256: str) -> str:
    """The version of a node that is a head on a shared trunk: changes when either file does."""
    from ..store import sha256_hex

    return sha256_hex(f"{trunk_sha256}:{head_sha256}".encode())


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1, default=str) + "\n")


def calibrate(classifier: TreeClassifier, cells: CellDataset, target_accuracy: float,
              certainty: float) -> tuple[dict[str, float], float]:
    """Fit the nodes' temperatures of the loaded tree ``classifier`` on labelled ``cells``, then its
    review threshold with them. Returns (node -> temperature, threshold); the manifest's threshold
    is the caller's to write."""
    temperatures = fit_temperatures(classifier, cells)
    return temperatures, calibrate_review_threshold(classifier, cells, target_accuracy, certainty)


def fit_temperatures(classifier: TreeClassifier, cells: CellDataset) -> dict[str, float]:
    """Fit each node's temperature on labelled ``cells``: set on the loaded node and written into
    its metadata file.

    The temperature divides the node's logits before the softmax; the fitted one minimises the
    negative log-likelihood of the cells' children (temperature scaling, Guo et al. 2017). The
    answers do not change, only how sure each node says it is: trained with label smoothing, the
    heads stay under-confident, and by different amounts, so a cell's confidence (the product along
    its path) ranked cells of different paths unevenly and set the review threshold where a small
    change of validation cells moved it far (docs/classification.md). A node with fewer than 10 of
    the cells keeps 1.0. Returns node -> temperature.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    tree = classifier.tree
    logits = classifier.node_logits(cells.images) if len(cells) else {}
    fitted = {}
    for code, node in classifier.nodes.items():
        child_of = [next((k for k, child in enumerate(node.classes) if tree.is_ancestor(tree[child], tree[label])),
                         None) for label in cells.labels]
        rows = [n for n, k in enumerate(child_of) if k is not None]
        temperature = 1.0
        if len(rows) >= 10:
            z, truth = logits[code][rows], np.array([child_of[n] for n in rows])

            def loss(log_temperature: float, z=z, truth=truth) -> float:
                return -float(log_softmax(z / np.exp(log_temperature), axis=1)[np.arange(len(truth)), truth].mean())

            temperature = float(np.exp(minimize_scalar(loss, bounds=(np.log(0.05), np.log(20)), method="bounded").x))
        node.temperature = round(temperature, 4)
        metadata_file = classifier.models_dir / f"{code}.json"
        write_json(metadata_file, json.loads(metadata_file.read_text()) | {"temperature": node.temperature})
        fitted[code] = temperature
    return fitted


def calibrate_review_threshold(classifier: TreeClassifier, val: CellDataset, target_accuracy: float,
                               certainty: float) -> float:
    """The review threshold of the loaded tree ``classifier``, from its answers on validation cells."""
    if len(val) == 0:  # nothing shows the accuracy: every cell goes to review
        return 1.0
    results = classifier.classify_arrays(val.images)
    tree = classifier.tree
    # right: the predicted cell type is the label or lies below it (a coarse 'ig' label)
    return review_threshold([r.confidence for r in results],
                            [tree.is_ancestor(tree[label], tree[r.code]) for r, label in zip(results, val.labels,
                                                                                             strict=True)],
                            target_accuracy, certainty)


def review_threshold(confidences: Sequence[float], correct: Sequence[bool], target_accuracy: float,
                     certainty: float) -> float:
    """The lowest confidence such that the cells at or above it are right ``target_accuracy`` of
    the time, with ``certainty`` (1.0 when no such confidence exists: every cell goes to review).

    The accuracy above a threshold is measured on a sample: the threshold where it first dips to
    the target is picked for its luck and lets fewer through on new cells (the shipped tree's was
    97.1% on validation cells, 95.5% on test cells). So the accuracy counted is the one-sided
    Clopper-Pearson lower bound at ``certainty``: few cells can never show the target.
    """
    from scipy.stats import beta

    order = np.argsort(-np.asarray(confidences, dtype=float), kind="stable")
    ranked = np.asarray(confidences, dtype=float)[order]
    right = np.cumsum(np.asarray(correct, dtype=float)[order])
    lower_bound = np.nan_to_num(beta.ppf(1 - certainty, right, np.arange(1, len(order) + 1) - right + 1))
    meets = np.flatnonzero(lower_bound >= target_accuracy)
    return float(ranked[meets[-1]]) if len(meets) else 1.0


def register_models(store, models_dir: Path, tree: Tree) -> None:
    """Record every node model of a trained tree folder in the database (idempotent by sha256)."""
    manifest = json.loads((models_dir / "classifier.json").read_text())
    for code in manifest["nodes"]:  # a shared trunk is part of each node's version, not a model apart
        metadata = json.loads((models_dir / f"{code}.json").read_text())
        store.register_model(kind="classifier", architecture=metadata["architecture"],
                             weights_path=str(models_dir / metadata["weights"]), sha256=metadata["sha256"],
                             metrics={k: v for k, v in metadata["metrics"].items() if k != "history"},
                             tree=tree.name, node_code=metadata["code"], class_codes=metadata["classes"])
