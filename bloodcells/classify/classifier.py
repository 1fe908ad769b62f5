"""The classifier of a whole tree: its node models loaded from the tree's folder, and cells typed by
descending the tree in batches (all images through the root's model, then each group through its
child's model, and so on)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..taxonomy import Tree, load_tree
from .files import ModelFileError, default_models_dir
from .node import NodeModel

if TYPE_CHECKING:
    import torch

TRUNK_BATCH = 32  # EfficientNet-Lite runs fastest on a CPU in batches this size (cache-bound beyond)


@dataclass
class CellResult:
    code: str
    name: str
    path: str  # node codes from the root, e.g. "ALL/MYE/MYM/NEU/NGS"
    confidence: float  # product of the per-level probabilities
    level_confidences: dict[str, float]  # node -> probability of the child it chose
    needs_review: bool
    probabilities: dict[str, dict[str, float]]  # node -> {child code: probability}


class TreeClassifier:
    """The per-node models of one tree; ``classify_images`` descends it for a batch of cells."""

    def __init__(self, tree: Tree, nodes: dict[str, NodeModel], manifest: dict, models_dir: Path):
        self.tree = tree
        self.nodes = nodes
        self.manifest = manifest
        self.models_dir = models_dir
        self.passthrough: dict[str, str] = dict(manifest.get("passthrough", {}))
        self.review_threshold: float = float(manifest.get("review_threshold", 0.0))
        self.lock = threading.RLock()
        self._frozen_trunk = None  # the shared trunk for classifying (heads.frozen_for_inference), made on first use

    @classmethod
    def load(cls, models_dir: str | Path | None = None, tree: str | Tree | None = None) -> TreeClassifier:
        """Load and verify (sha256) every model of a trained tree."""
        models_dir = default_models_dir(tree if isinstance(tree, str) else None) if models_dir is None \
            else Path(models_dir)
        manifest_file = models_dir / "classifier.json"
        if not manifest_file.is_file():
            raise ModelFileError(f"{manifest_file}: no trained classifier here "
                                 "(train one with `bloodcells train --data PATH --out DIR`, then put it in use with "
                                 "`bloodcells versions promote DIR`; or `make models-classifier`)")
        try:
            manifest = json.loads(manifest_file.read_text())
        except ValueError as error:
            raise ModelFileError(f"{manifest_file}: unreadable ({error})") from error
        if not isinstance(tree, Tree):
            tree_file = models_dir / "tree.yaml"
            tree = load_tree(tree_file if tree_file.is_file() else manifest["tree"])
        trunk = None
        if manifest.get("trunk"):
            from ..heads import load_trunk

            trunk = load_trunk(models_dir, manifest["trunk"])
        if not manifest["nodes"]:  # it would give every cell one type, sure of it and never flagged
            raise ModelFileError(f"{manifest_file}: a tree without a trained node (its training data held one "
                                 "cell type); train it on at least two")
        nodes = {code: NodeModel.load(models_dir / f"{code}.json", trunk) for code in manifest["nodes"]}
        unknown = [code for code in nodes if code not in tree]
        if unknown:
            raise ModelFileError(f"{manifest_file}: nodes {', '.join(unknown)} are not in tree {tree.name!r}")
        return cls(tree, nodes, manifest, models_dir)

    @property
    def input_size(self) -> int:
        """The largest input size of the tree's models (images are never needed larger)."""
        return max((node.input_size for node in self.nodes.values()), default=64)

    def compact(self, image):
        """``image`` as small as the nodes read it, to hold until its batch is classified: a uint8 array
        at their input size when they share one (what each node would make of it; a batch of 64 images
        of 10,000 pixels a side, 300 MB each decoded, took the server's memory), else the image itself."""
        sizes = {node.input_size for node in self.nodes.values()}
        if len(sizes) != 1:
            return image
        return next(iter(self.nodes.values())).prepare([image])[0]

    @property
    def tree_version(self) -> str:
        """The version id of this tree (``bloodcells.versions``): which models made an analysis."""
        from ..versions import version_of

        return version_of(self.models_dir)

    def versions(self) -> dict[str, str]:
        return {code: node.sha256 for code, node in self.nodes.items()}

    def classify_images(self, images: Sequence, batch_size: int = 64, flips: bool = False) -> list[CellResult]:
        """Classify PIL images (or uint8 arrays); thread-safe. ``flips``: test-time augmentation,
        the shared trunk's features averaged over the four flips of each cell (about 3x slower;
        it paid on the 112 px tree, leaf accuracy 0.810 -> 0.839; on the 144 px tree trained with
        plain backgrounds it does not: 0.878 -> 0.877, bench/bench_tta.py)."""
        return self._descend(list(images), batch_size, flips)

    def classify_arrays(self, images: np.ndarray, batch_size: int = 64, flips: bool = False) -> list[CellResult]:
        """Classify uint8 NHWC arrays (as the training cache holds them)."""
        return self._descend(list(images), batch_size, flips)

    def node_logits(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every node's children's logits (before its temperature) for every image (uint8 NHWC)."""
        logits, resized, trunk_features = {}, {}, None  # resized: input size -> every image, once
        with self.lock:
            for code, model in self.nodes.items():
                if model.input_size not in resized:
                    resized[model.input_size] = model.prepare(list(images))
                if model.trunk is None:
                    logits[code] = model.logits(resized[model.input_size])
                    continue
                if trunk_features is None:
                    trunk_features = self._trunk_features(model, resized[model.input_size])
                logits[code] = model.head_logits(trunk_features).numpy()
        return logits

    def _trunk_features(self, model: NodeModel, prepared: np.ndarray, flips: bool = False) -> torch.Tensor:
        """The shared trunk's pooled features of ``prepared`` images (its frozen copy, made on first use)."""
        import torch

        from ..heads import features, frozen_for_inference

        if self._frozen_trunk is None:
            self._frozen_trunk = frozen_for_inference(model.trunk, model.input_size)
        return torch.from_numpy(features(self._frozen_trunk, prepared, model.mean, model.std, model.stain_norm,
                                         TRUNK_BATCH, flips=flips))

    def _descend(self, images: list, batch_size: int, flips: bool = False) -> list[CellResult]:
        count = len(images)
        if not count:
            return []
        at = [self.tree.root.code] * count
        chosen: list[dict[str, float]] = [{} for _ in range(count)]
        probabilities: list[dict[str, dict[str, float]]] = [{} for _ in range(count)]
        waiting = {self.tree.root.code: list(range(count))}
        resized: dict[int, np.ndarray] = {}  # input size -> every image resized once, shared by the nodes
        trunk_features: torch.Tensor | None = None  # the shared trunk's, of every image, computed once
        with self.lock:
            while waiting:
                code = next(iter(waiting))
                members = waiting.pop(code)
                if code in self.nodes:
                    model = self.nodes[code]
                    if model.input_size not in resized:
                        resized[model.input_size] = model.prepare(images)
                    if model.trunk is not None:  # one trunk pass per cell, shared by every head
                        if trunk_features is None:
                            trunk_features = self._trunk_features(model, resized[model.input_size], flips)
                        probs = model.head_probabilities(trunk_features[members])
                    else:
                        probs = model.probabilities(resized[model.input_size][members], batch_size, flips)
                    picks = [model.classes[k] for k in probs.argmax(1)]
                    for i, row, pick in zip(members, probs, picks, strict=True):
                        probabilities[i][code] = {c: float(p) for c, p in zip(model.classes, row, strict=True)}
                        chosen[i][code] = float(row.max())
                        at[i] = pick
                elif code in self.passthrough:
                    for i in members:
                        chosen[i][code] = 1.0
                        at[i] = self.passthrough[code]
                else:
                    continue  # no model below this node: the answer stays here
                for i in members:
                    if not self.tree[at[i]].is_leaf:
                        waiting.setdefault(at[i], []).append(i)
        results = []
        for i in range(count):
            confidence = float(np.prod(list(chosen[i].values()))) if chosen[i] else 0.0
            node = self.tree[at[i]]
            results.append(CellResult(code=node.code, name=node.name, path=self.tree.path_codes(node.code),
                                      confidence=confidence, level_confidences=chosen[i],
                                      needs_review=confidence < self.review_threshold,
                                      probabilities=probabilities[i]))
        return results


def load_classifier(models_dir: str | Path | None = None) -> TreeClassifier:
    """The classifier in ``models_dir``, loaded once per process (reloaded when retrained)."""
    from ..caching import load_version

    folder = Path(models_dir) if models_dir else default_models_dir()
    return load_version(TreeClassifier.load, folder, folder / "classifier.json")
