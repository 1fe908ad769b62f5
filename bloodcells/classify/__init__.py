"""Classifying cells with the tree of per-node models.

On disk, a trained tree is a folder (default ``models/classifier/<tree>/``) holding
``classifier.json`` (the manifest: trained nodes, single-child nodes that always descend, the
calibrated review threshold, training configuration and data fingerprint), per trained node
``<code>.safetensors`` (weights) and ``<code>.json`` (architecture, input size, normalisation,
class codes in output order, the temperature of its probabilities, metrics with the per-epoch
history, sha256 of the weights), and
``split.json`` (sha256 of the held-out test images, so evaluation never scores seen cells).
``tree.yaml`` is the tree the models were trained for.

Inference descends the tree in batches: all images through the root's model, then each group
through its child's model, and so on. ``classify`` streams a folder or zip (memory stays flat:
results are spooled to a temporary file until they are stored in one transaction).
"""

from __future__ import annotations

import json
import pickle
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import to_tensor
from .taxonomy import Tree, load_tree

if TYPE_CHECKING:
    import torch


TREE_VERSION = "tree version"  # the key of the tree's version id among an analysis's model versions
TRUNK_BATCH = 32  # EfficientNet-Lite runs fastest on a CPU in batches this size (cache-bound beyond)


class ModelFileError(RuntimeError):
    """A model file that is missing, altered or unreadable (the message names it)."""


def read_verified(metadata_file: Path) -> tuple[dict, Path, dict]:
    """A model's metadata, its weights file and their tensors, once the file's sha256 matches the
    metadata's (``weights_sha256`` for a head on a shared trunk, else ``sha256``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .store import sha256_file

    try:
        metadata = json.loads(metadata_file.read_text())
        weights = metadata_file.parent / metadata["weights"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelFileError(f"{metadata_file}: unreadable model metadata ({error})") from error
    if not weights.is_file():
        raise ModelFileError(f"{weights}: model weights missing")
    if sha256_file(weights) != metadata.get("weights_sha256", metadata.get("sha256")):
        raise ModelFileError(f"{weights}: sha256 does not match {metadata_file.name} "
                             "(file altered or corrupt; retrain or restore it)")
    try:
        return metadata, weights, load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{weights}: unreadable weights ({error})") from error


@dataclass
class CellResult:
    code: str
    name: str
    path: str  # node codes from the root, e.g. "ALL/MYE/MYM/NEU/NGS"
    confidence: float  # product of the per-level probabilities
    level_confidences: dict[str, float]  # node -> probability of the child it chose
    needs_review: bool
    probabilities: dict[str, dict[str, float]]  # node -> {child code: probability}


class NodeModel:
    """The classifier of one inner node: which child does a cell belong to?"""

    def __init__(self, code: str, metadata: dict, module, path: Path):
        self.code = code
        self.classes: list[str] = list(metadata["classes"])
        self.architecture: str = metadata["architecture"]
        self.input_size: int = int(metadata["input_size"])
        self.mean: tuple[float, ...] = tuple(metadata["mean"])
        self.std: tuple[float, ...] = tuple(metadata["std"])
        self.stain_norm: bool = bool(metadata.get("stain_norm", False))
        self.sha256: str = metadata["sha256"]
        self.path = path
        self.module = module
        self.metrics: dict = metadata.get("metrics", {})
        # divides the children's logits before the softmax; fitted on validation cells after training
        # (train.fit_temperatures): label smoothing leaves the heads under-confident
        self.temperature: float = float(metadata.get("temperature", 1.0))
        self.metadata = metadata
        self.trunk = None  # the shared trunk module when this node is a head on it (bloodcells.heads)

    @classmethod
    def load(cls, metadata_file: Path, trunk=None) -> NodeModel:
        """A node's model; ``trunk`` (module, metadata): the shared trunk its head sits on, if any."""
        from .backbones import create_model, node_network
        from .heads import trunk_with_head
        from .train import network_sha256

        metadata, weights, state = read_verified(metadata_file)
        if metadata.get("trunk") and trunk is None:
            raise ModelFileError(f"{metadata_file}: a head on the trunk {metadata['trunk']}, which is not loaded")
        if trunk and network_sha256(trunk[1]["sha256"], metadata["weights_sha256"]) != metadata.get("sha256"):
            raise ModelFileError(f"{metadata_file}: its sha256 is not that of its head on this trunk "
                                 "(files altered or mixed; retrain or restore them)")
        classes = list(metadata["classes"])
        outputs = metadata.get("outputs") or {code: code for code in classes}  # label -> child it lies under
        try:
            if trunk:
                from torch import nn

                head = nn.Linear(state["weight"].shape[1], len(outputs))  # the trunk's pooled width
                head.load_state_dict(state)
                backbone = trunk_with_head(trunk[0], head)
            else:
                backbone = create_model(metadata["architecture"], len(outputs), img_size=int(metadata["input_size"]))
                backbone.load_state_dict(state)
            module = node_network(backbone, [classes.index(child) for child in outputs.values()], len(classes))
        except (RuntimeError, ValueError) as error:
            raise ModelFileError(f"{weights}: cannot load into {metadata['architecture']} ({error})") from error
        import torch

        module = module.float().eval().to(memory_format=torch.channels_last)  # faster convolutions on a CPU
        node = cls(metadata["code"], metadata, module, weights)
        node.trunk = trunk[0] if trunk else None
        return node

    def head_logits(self, features) -> torch.Tensor:
        """The children's logits (before the temperature) from the shared trunk's pooled ``features``."""
        import torch

        with torch.inference_mode():
            return self.module.group(self.module.backbone.head(features)).float()

    def head_probabilities(self, features) -> np.ndarray:
        """Softmax over ``classes`` from the shared trunk's pooled ``features`` (N x D tensor)."""
        import torch

        return torch.softmax(self.head_logits(features) / self.temperature, dim=1).numpy()

    def prepare(self, images: Sequence) -> np.ndarray:
        """PIL images or uint8 arrays -> uint8 NHWC at this model's input size."""
        from PIL import Image

        size = self.input_size
        arrays = []
        for image in images:
            if isinstance(image, np.ndarray):
                if image.shape[:2] == (size, size):
                    arrays.append(image)
                    continue
                image = Image.fromarray(image)
            arrays.append(np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
        return np.stack(arrays)

    def preprocess(self, image) -> torch.Tensor:
        """One PIL image -> the normalised tensor [3, H, W] this model takes."""
        return to_tensor(self.prepare([image]), self.mean, self.std, self.stain_norm)[0]

    def probabilities(self, images: Sequence, batch_size: int = 64, flips: bool = False) -> np.ndarray:
        """Softmax over ``classes`` for each image (N x len(classes)); ``flips``: the mean over
        the four flips of each image."""
        import torch

        out = [(sum(torch.softmax(view / self.temperature, dim=1) for view in views) / len(views)).numpy()
               for views in self._view_logits(images, batch_size, flips)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def logits(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """The children's logits (before the temperature) for each image, by this node's own network."""
        out = [views[0].numpy() for views in self._view_logits(images, batch_size, flips=False)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def _view_logits(self, images: Sequence, batch_size: int, flips: bool) -> Iterator[list[torch.Tensor]]:
        """Per batch of ``images``: the network's logits for each view (the image, or its four flips)."""
        import torch

        from .heads import FLIPS

        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = to_tensor(self.prepare(images[start:start + batch_size]), self.mean, self.std,
                                  self.stain_norm).to(memory_format=torch.channels_last)
                yield [self.module(batch.flip(dims) if dims else batch).float()
                       for dims in (FLIPS if flips else ((),))]


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
                                 "(train one with `bloodcells train --data PATH --out DIR` or `make models-classifier`)")
        try:
            manifest = json.loads(manifest_file.read_text())
        except ValueError as error:
            raise ModelFileError(f"{manifest_file}: unreadable ({error})") from error
        if not isinstance(tree, Tree):
            tree_file = models_dir / "tree.yaml"
            tree = load_tree(tree_file if tree_file.is_file() else manifest["tree"])
        trunk = None
        if manifest.get("trunk"):
            from .heads import load_trunk

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
        from .versions import version_of

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

        from .heads import features, frozen_for_inference

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


def default_models_dir(tree_name: str | None = None) -> Path:
    """The folder of the tree in use: the version promoted last (see ``versions``), else the shipped one."""
    from .versions import current_dir

    return current_dir(tree_name or "default")


def load_classifier(models_dir: str | Path | None = None) -> TreeClassifier:
    """The classifier in ``models_dir``, loaded once per process (reloaded when retrained)."""
    from .caching import load_version

    folder = Path(models_dir) if models_dir else default_models_dir()
    return load_version(TreeClassifier.load, folder, folder / "classifier.json")


# -- classifying uploads ----------------------------------------------------------------------
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

    def counts(self) -> dict[str, int]:
        """Cells per predicted cell type (code), most frequent first."""
        return dict(Counter(row.result.code for row in self.rows).most_common())

    def write_csv(self, path: str | Path) -> Path:
        """``file,code,name,path,confidence,needs_review``, one row per image, as the app's
        downloads (``spreadsheet``: UTF-8 with a byte-order mark, formulas written as text)."""
        from .spreadsheet import write_csv

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
    from .inputs import (
        InputError,
        InputImage,
        InputProblem,
        check_source,
        count_images,
        is_image_name,
        iter_inputs,
        later_pages,
        none_readable,
        open_image,
    )
    from .store import PredictionRow, record_analysis

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
            if image is None:
                if len(outcome.problems) % batch_size == 0:  # an upload of unreadable files moves the bar too
                    report()
                continue
            if pages := later_pages(image, item.name):
                outcome.problems.append(pages)
            batch.append((item, classifier.compact(image)))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        if not outcome.rows:  # images, none decodable: an error, not a finished analysis of 0 cells
            raise none_readable(label, [p for p in outcome.problems if is_image_name(p.name)])
        report()
        spool.seek(0)
        run.predictions = _unspool(spool)
        run.summary = {"counts": outcome.counts(), "cells": len(outcome.rows),
                       "needs_review": sum(r.result.needs_review for r in outcome.rows),
                       "problems": [str(p) for p in outcome.problems][:200]}
    return outcome


def _unspool(spool) -> Iterator:
    while True:
        try:
            yield pickle.load(spool)
        except EOFError:
            return

