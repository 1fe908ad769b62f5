"""Morphology in words: cell size and shape, nucleus, N:C ratio, chromatin, cytoplasm and granules.

An attribute head predicts WBCAtt's attributes (Tsutsui et al., NeurIPS 2023; one row per PBC white
cell) from the shipped classifier's own features: the frozen backbones of the tree's node models
are run on the cell, their pooled pre-logit features concatenated and standardised, and one
logistic regression per attribute reads them. The head is small (a few hundred kB), trains in
a minute on a CPU (``bloodcells train-attributes`` / ``make models-attributes``) and records the
sha256 of every node model it was trained on, so it refuses to run on features of other weights.

On disk (default ``models/attributes/default/``): ``attributes.json`` (attributes and their values,
nodes and their sha256, held-out metrics) and ``attributes.npz`` (standardisation and weights).
"""

from __future__ import annotations

import csv
import json
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Columns of the attribute table that are not attributes.
ID_COLUMNS = ("img_name", "label", "path")


class AttributeHeadError(RuntimeError):
    """No usable attribute head: missing, unreadable, or trained on other classifier weights."""


class AttributesForOtherModels(AttributeHeadError):
    """The attribute head was trained on other classifier models than the ones loaded (another version)."""


class AttributeDataError(ValueError):
    """An attribute table (csv) that cannot be trained on; the message names the file and problem."""


@dataclass
class AttributeHead:
    """One logistic regression per attribute over the classifier's concatenated node features."""
    attributes: dict[str, list[str]]  # attribute -> its values, in the weights' row order
    nodes: list[str]  # node models whose features are read, in order
    node_sha256: dict[str, str]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    weights: dict[str, tuple[np.ndarray, np.ndarray]]  # attribute -> (coef (k, d), intercept (k,))
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    backbone: str | None = None  # a classifier folder of its own, relative to the head, instead of the caller's

    def feature_source(self, classifier):
        """The classifier whose features the head reads: its own backbone when it has one."""
        if self.backbone is None:
            return classifier
        from .classify import ModelFileError, load_classifier

        try:
            return load_classifier(self.path.parent / self.backbone)
        except ModelFileError as error:
            raise AttributeHeadError(f"{self.path}: its backbone is unusable ({error})") from error

    def check(self, classifier) -> None:
        for code in self.nodes:
            node = classifier.nodes.get(code)
            if node is None or node.sha256 != self.node_sha256[code]:
                found = "no such node" if node is None else f"sha256 {node.sha256[:12]}"
                raise AttributesForOtherModels(
                    f"{self.path or 'attribute head'}: trained on classifier node {code} with sha256 "
                    f"{self.node_sha256[code][:12]}, the loaded classifier has {found}; "
                    "retrain it with `make models-attributes` (bloodcells train-attributes)")

    def predict_features(self, features: np.ndarray) -> list[dict[str, str]]:
        standard = (features - self.feature_mean) / self.feature_scale
        columns = {}
        for name, values in self.attributes.items():
            coef, intercept = self.weights[name]
            if len(values) == 1:  # the training table held one value only
                columns[name] = [values[0]] * len(features)
                continue
            scores = standard @ coef.T + intercept
            picks = (scores[:, 0] > 0).astype(int) if coef.shape[0] == 1 else scores.argmax(1)
            columns[name] = [values[k] for k in picks]
        return [{name: columns[name][i] for name in self.attributes} for i in range(len(features))]

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {"feature_mean": self.feature_mean.astype(np.float32),
                  "feature_scale": self.feature_scale.astype(np.float32)}
        for n, name in enumerate(self.attributes):
            arrays[f"coef_{n}"], arrays[f"intercept_{n}"] = (w.astype(np.float32) for w in self.weights[name])
        np.savez_compressed(out_dir / "attributes.npz", **arrays)
        meta = {"attributes": self.attributes, "nodes": self.nodes, "node_sha256": self.node_sha256,
                "backbone": self.backbone, "metrics": self.metrics}
        self.path = out_dir / "attributes.json"
        self.path.write_text(json.dumps(meta, indent=1) + "\n")
        return self.path

    @classmethod
    def load(cls, path: Path) -> AttributeHead:
        path = Path(path)
        if path.is_dir():
            path = path / "attributes.json"
        try:
            meta = json.loads(path.read_text())
            arrays = _read_arrays(path.with_suffix(".npz"))
            weights = {name: (arrays[f"coef_{n}"], arrays[f"intercept_{n}"])
                       for n, name in enumerate(meta["attributes"])}
            return cls(attributes=meta["attributes"], nodes=meta["nodes"], node_sha256=meta["node_sha256"],
                       feature_mean=arrays["feature_mean"], feature_scale=arrays["feature_scale"],
                       weights=weights, metrics=meta.get("metrics", {}), path=path, backbone=meta.get("backbone"))
        except FileNotFoundError as error:
            raise AttributeHeadError(f"{error.filename}: no attribute head here "
                                     "(train one with `make models-attributes`)") from error
        except (OSError, ValueError, KeyError) as error:
            raise AttributeHeadError(f"{path}: unreadable attribute head ({error})") from error


def _read_arrays(file: Path) -> dict[str, np.ndarray]:
    """Every array of the head's ``.npz``; a damaged one raises AttributeHeadError naming it (numpy
    raises zipfile's, zlib's and its own errors, which named no file and ended the CLI in a traceback)."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise AttributeHeadError(f"{file}: unreadable attribute head weights ({error})") from error


def default_head_dir() -> Path:
    from .settings import settings

    return settings().models_dir / "attributes" / "default"


def feature_nodes(classifier) -> list[str]:
    """The nodes whose features describe a cell: all of them, or one when every node is a head on
    one shared trunk (their pooled features are the same)."""
    trunks = {id(node.trunk) if node.trunk is not None else None for node in classifier.nodes.values()}
    return list(classifier.nodes)[:1] if None not in trunks and len(trunks) == 1 else list(classifier.nodes)


def node_features(classifier, images: Sequence, nodes: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Pooled pre-logit features of each node model's backbone, concatenated: (N, sum of widths)."""
    import torch

    parts = []
    with classifier.lock, torch.inference_mode():
        for code in nodes:
            node = classifier.nodes[code]
            if not hasattr(node.module, "forward_head"):
                raise AttributeHeadError(f"node {code}'s {node.architecture} has no timm forward_head")
            chunks = []
            for start in range(0, len(images), batch_size):
                from .data import to_tensor

                batch = to_tensor(node.prepare(images[start:start + batch_size]), node.mean, node.std,
                                  node.stain_norm)
                chunks.append(node.module.forward_head(node.module.forward_features(batch), pre_logits=True)
                              .flatten(1).float().numpy())
            parts.append(np.concatenate(chunks))
    return np.concatenate(parts, axis=1)


def load_attribute_head(path: str | Path | None = None) -> AttributeHead:
    """The head in ``path`` (default models/attributes/default), loaded once per process and version."""
    from .caching import load_version

    folder = Path(path) if path else default_head_dir()
    meta = folder / "attributes.json" if folder.is_dir() or not folder.suffix else folder
    return load_version(AttributeHead.load, meta, meta)


def predict_attributes(image, classifier, head: AttributeHead | str | Path | None = None) -> dict[str, str]:
    """The cell's morphology attributes, e.g. ``{"cell_size": "big", "nucleus_shape": "segmented-bilobed"}``.

    ``image``: a PIL image, image bytes or a file path. Raises AttributeHeadError when no head fits
    ``classifier``.
    """
    from .inputs import open_any

    if not isinstance(head, AttributeHead):
        head = load_attribute_head(head)
    classifier = head.feature_source(classifier)
    head.check(classifier)
    return head.predict_features(node_features(classifier, [open_any(image)], head.nodes))[0]


# How each attribute reads in a sentence (WBCAtt's names and values).
_PHRASES = {
    "cell_size": "{} cell", "cell_shape": "{} outline", "nucleus_shape": "{} nucleus",
    "nuclear_cytoplasmic_ratio": "{} N:C ratio", "chromatin_density": "{} packed chromatin",
    "cytoplasm_vacuole": "vacuoles: {}", "cytoplasm_texture": "{} cytoplasm", "cytoplasm_colour": "{} cytoplasm colour",
    "granule_type": "granules: {}", "granule_colour": "granule colour: {}", "granularity": "granular: {}",
}


def describe(attributes: dict[str, str]) -> str:
    """The attributes as one line of words, e.g. 'big cell, round outline, segmented-bilobed nucleus, ...'."""
    return ", ".join(_PHRASES.get(name, f"{name.replace('_', ' ')}: {{}}").format(value)
                     for name, value in attributes.items())


# -- training -----------------------------------------------------------------------------------
def read_attribute_table(csv_path: Path, images_root: Path) -> tuple[list[dict], list[str]]:
    """Rows of the table and its attribute columns; every image must exist."""
    try:
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as error:
        raise AttributeDataError(f"{csv_path}: cannot read ({error.strerror or error})") from error
    except (csv.Error, UnicodeDecodeError) as error:
        raise AttributeDataError(f"{csv_path}: not a readable csv ({error})") from error
    missing = [c for c in ("path", "label") if c not in columns]
    attributes = [c for c in columns if c not in ID_COLUMNS]
    if missing or not attributes:
        raise AttributeDataError(f"{csv_path}: needs columns path, label and at least one attribute "
                                 f"(missing: {', '.join(missing) or 'attribute columns'})")
    if not rows:
        raise AttributeDataError(f"{csv_path}: no rows")
    absent = [r["path"] for r in rows if not (images_root / r["path"]).is_file()]
    if absent:
        raise AttributeDataError(f"{csv_path}: {len(absent)} {'image' if len(absent) == 1 else 'images'} not found under {images_root}, "
                                 f"e.g. {', '.join(absent[:3])}")
    blank = [f"row {n + 2} ({r['path']}): {c}" for n, r in enumerate(rows) for c in attributes if not r[c]]
    if blank:
        raise AttributeDataError(f"{csv_path}: empty attribute value in {', '.join(blank[:3])}")
    return rows, attributes


def _held_out(rows: list[dict], digests: list[str], classifier, test_fraction: float, seed: int):
    """Test rows: the classifier's own held-out images when they cover enough of the table (so neither
    the backbone nor the head saw them), else a random share stratified by label."""
    split_file = Path(classifier.models_dir) / "split.json"
    if split_file.is_file():
        held = set(json.loads(split_file.read_text()).get("test", []))
        test = [i for i, d in enumerate(digests) if d in held]
        if len(test) >= max(5, 0.05 * len(rows)):
            return test, "the classifier's held-out test images (unseen by backbone and head)"
    from sklearn.model_selection import train_test_split

    indices = list(range(len(rows)))
    _, test = train_test_split(indices, test_size=test_fraction, random_state=seed,
                               stratify=[r["label"] for r in rows])
    return sorted(test), f"a random {test_fraction:.0%} of the table, stratified by cell type"


# The L2 strengths (C) cross-validated per attribute, strongest first (ties go to the first). Thousands
# of features and a few thousand cells: without strong regularisation the regression overfits and,
# on a lopsided attribute, does worse than always answering the common value.
STRENGTHS = (0.001, 0.005, 0.02, 0.1)
FOLDS = 5  # each strength is scored on every fifth of the training cells, trained on the rest


def train_attribute_head(csv_path: str | Path, classifier, *, out_dir: str | Path,
                         images_root: str | Path | None = None, nodes: Sequence[str] | None = None,
                         test_fraction: float = 0.2, seed: int = 0, backbone: str | None = None,
                         log: Callable[[str], None] | None = None) -> AttributeHead:
    """Train one logistic regression per attribute on ``classifier``'s features, test it, save it.

    ``images_root``: what the table's ``path`` column is relative to (default: the csv's folder's
    parent, as WBCAtt's ``wbcatt/pbc_attributes.csv`` names ``pbc/...``). ``nodes``: the node models
    whose features are read (default: all of them). ``backbone``: set when ``classifier`` is the head's
    own (see ``train_own_backbone``): its folder relative to ``out_dir``.
    """
    from sklearn.dummy import DummyClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .inputs import open_image
    from .store import sha256_hex

    say = log or (lambda _text: None)
    csv_path = Path(csv_path)
    root = Path(images_root) if images_root else csv_path.resolve().parent.parent
    rows, attribute_names = read_attribute_table(csv_path, root)
    nodes = list(nodes or feature_nodes(classifier))
    contents = [(root / r["path"]).read_bytes() for r in rows]
    digests = [sha256_hex(c) for c in contents]
    test, split_name = _held_out(rows, digests, classifier, test_fraction, seed)
    test_set = set(test)
    train = [i for i in range(len(rows)) if i not in test_set]
    say(f"{len(rows)} cells, {len(attribute_names)} attributes; {len(train)} train, {len(test)} test ({split_name})")
    # Decoded once at the largest input size the node models take, so memory stays small.
    size = max(classifier.nodes[c].input_size for c in nodes)
    images = [open_image(content, r["path"]).resize((size, size)) for content, r in zip(contents, rows, strict=True)]
    say(f"features of node models {', '.join(nodes)}...")
    features = node_features(classifier, images, nodes)
    # Fitted once and frozen in every attribute's pipeline: the head keeps one mean and scale for all.
    scaler = StandardScaler().fit(features[train])
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    weights, attributes, metrics = {}, {}, {}
    for name in attribute_names:
        labels = np.asarray([r[name] for r in rows])
        majority = DummyClassifier(strategy="most_frequent").fit(features[train], labels[train])
        values = sorted(set(labels[train]))
        if len(values) == 1:  # nothing to learn: the head answers that value (see predict_features)
            model, strength = majority, None
            coef, intercept = np.zeros((0, features.shape[1])), np.zeros(0)
        else:
            model = make_pipeline(FrozenEstimator(scaler), LogisticRegressionCV(
                Cs=STRENGTHS, l1_ratios=(0.0,), cv=folds, scoring="accuracy", max_iter=2000,
                use_legacy_attributes=False))  # l1_ratio 0: an L2 penalty
            regression = model.fit(features[train], labels[train])[-1]
            values = [str(v) for v in regression.classes_]
            coef, intercept, strength = regression.coef_, regression.intercept_, float(regression.C_)
        truth = labels[test]
        predicted = model.predict(features[test])
        metrics[name] = {"accuracy": float(accuracy_score(truth, predicted)),
                         "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
                         "C": strength, "majority": float(accuracy_score(truth, majority.predict(features[test]))),
                         "test_images": len(test)}
        weights[name], attributes[name] = (np.asarray(coef), np.asarray(intercept)), values
        say(f"{name}: accuracy {metrics[name]['accuracy']:.3f} (majority value {metrics[name]['majority']:.3f})")
    head = AttributeHead(
        attributes=attributes, nodes=nodes, node_sha256={c: classifier.nodes[c].sha256 for c in nodes},
        feature_mean=scaler.mean_, feature_scale=scaler.scale_, weights=weights, backbone=backbone,
        metrics={"attributes": metrics, "split": split_name, "train_images": len(train), "test_images": len(test),
                 "mean_accuracy": float(np.mean([m["accuracy"] for m in metrics.values()])),
                 "source": csv_path.name})
    head.save(Path(out_dir))
    return head


def train_own_backbone(csv_path: str | Path, out_dir: str | Path, *,
                       images_root: str | Path | None = None, config=None,
                       log: Callable[[str], None] | None = None) -> AttributeHead:
    """An attribute head with a small backbone of its own, for when no trained classifier fits.

    The backbone is a tree classifier (``bloodcells.train.train_tree``) trained on the table's own
    images and cell-type labels, into ``out_dir/backbone``; its held-out test images are the head's
    test images, so the reported accuracy is on cells neither part saw.
    """
    import tempfile

    from .classify import TreeClassifier
    from .train import TrainConfig, train_tree

    say = log or (lambda _text: None)
    csv_path = Path(csv_path)
    root = Path(images_root) if images_root else csv_path.resolve().parent.parent
    rows, _ = read_attribute_table(csv_path, root)
    out_dir = Path(out_dir)
    # The shipped classifier's architecture and input size (6 epochs took 3 minutes on the shared 2 cores).
    config = config or TrainConfig(architecture="mobilenetv3_small_100", input_size=64, epochs=20, patience=5,
                                   min_per_class=320, cross_site=False)
    with tempfile.TemporaryDirectory() as folder:
        labels = Path(folder) / "labels.csv"  # the training reader's format: path, label
        with labels.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            writer.writerows([str((root / r["path"]).resolve()), r["label"]] for r in rows)
        train_tree([labels], out_dir / "backbone", config=config, log=say)
    return train_attribute_head(csv_path, TreeClassifier.load(out_dir / "backbone"), out_dir=out_dir,
                                images_root=root, backbone="backbone", log=say)
