"""Adapting a trained tree to a new lab's camera, stain and smear technique, from its reviewed cells.

How: the tree's shared trunk is fine-tuned from its trained weights for a few epochs on the lab's
labelled cells mixed with replayed original training cells (so the original sites do not
regress), balanced per cell type and per source (a lab's 15 neutrophils weigh as much per epoch
as the original hundreds; they are oversampled and augmented), and then every node's head is
retrained on the new trunk's features of the same mix. BatchNorm statistics follow the mixed
batches. A share of the lab's cells (a fifth by default, stratified) is held
back: the tree is scored on it, and on the original sources' test split, before and after.
The result is a complete model folder (``classifier.json`` records its lineage under ``adapted``).
docs/classification.md compares this with tuning the heads alone (``AdaptConfig.epochs = 0``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .classify import TreeClassifier, read_verified
from .data import CellDataset, load_dataset
from .evaluate import Evaluation, Scores, score
from .settings import recorded_folder, settings

READ_STEP = 100  # cells read between two progress calls


class AdaptError(ValueError):
    """Input that adaptation cannot use, worded for a lab user."""


class AdaptCancelled(RuntimeError):
    """The user stopped the adaptation; nothing was written."""


@dataclass
class AdaptConfig:
    hold_out: float = 0.2  # share of the lab's cells held back for scoring (stratified)
    epochs: int = 6  # of the trunk; 0 keeps it and retrains only the heads
    per_label: int = 40  # cells per cell type and source per epoch (the lab's oversampled and augmented)
    replay_per_label: int = 400  # original training cells per cell type and source mixed in (at most)
    learning_rate: float = 3e-4  # under a third of training's: start from the trained weights, stay near them
    layer_decay: float = 1.0  # each layer below the trunk's top learns at this factor of the one above
    # fit the trunk's new classifier on its frozen features before fine-tuning (LP-FT): measured as a
    # trade (more on the new site, more lost on the original, docs/classification.md), so off
    linear_probe: bool = False
    min_per_label: int = 3  # lab cells needed per cell type (one held back, the rest to learn from)
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.hold_out < 1:
            raise AdaptError(f"--hold-out must be at least 0 and below 1 (got {self.hold_out})")
        if self.epochs < 0 or self.per_label < 1 or self.replay_per_label < 0:
            raise AdaptError("epochs must be 0 or more; cells per type at least 1")
        if not 0 < self.layer_decay <= 1:
            raise AdaptError(f"--layer-decay must be above 0 and at most 1 (got {self.layer_decay})")


@dataclass
class AdaptResult:
    out_dir: Path
    base: dict[str, str]  # node (and "trunk") -> sha256 of the tree it started from
    lab_counts: dict[str, int]  # cells of the lab per label, used for learning
    held_out: int
    replayed: int
    before: dict[str, Evaluation] = field(default_factory=dict)  # "lab", "original" -> scores
    after: dict[str, Evaluation] = field(default_factory=dict)
    seconds: float = 0.0

    def figures(self) -> dict:
        """Accuracy, macro-F1 and per-class accuracy before and after, for the lineage record."""
        return {when: {part: scores.lineage_figures() for part, scores in outcome.items()}
                for when, outcome in (("before", self.before), ("after", self.after))}

    def lineage(self) -> dict:
        return {"base": self.base, "cells": sum(self.lab_counts.values()), "per_label": self.lab_counts,
                "held_out": self.held_out, "replayed": self.replayed, "seconds": round(self.seconds, 1),
                "figures": self.figures()}

    def summary(self) -> str:
        lines = [f"adapted on {sum(self.lab_counts.values())} lab cells ({self.held_out} held back), "
                 f"{self.replayed} original cells replayed, in {self.seconds / 60:.1f} min -> {self.out_dir}"]
        names = {"lab": "lab's held-back cells", "original": "original sources' test split"}
        for part, name in names.items():
            for when, outcome in (("before", self.before), ("after", self.after)):
                tree = outcome.get(part) and outcome[part].tree
                if tree is None or not tree.truth:
                    continue
                per_class = ", ".join(f"{c} {a:.2f}" for c, a in tree.per_class.items())
                lines.append(f"  {name}, {when}: {tree.headline()} (n={len(tree.truth)}; {per_class})")
        return "\n".join(lines)


def adapt(labelled: str | Path, out_dir: str | Path, *, models_dir: str | Path | None = None,
          replay: Sequence[str | Path] | None = None, config: AdaptConfig | None = None,
          progress: Callable[[int, int, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
          log: Callable[[str], None] = print) -> AdaptResult:
    """Adapt the tree in ``models_dir`` (default: the one in use) to the cells of ``labelled`` (a
    folder or zip of class folders, or a CSV) and write the adapted tree to ``out_dir``.

    ``replay``: the original training sources (default: those the tree's manifest names).
    ``progress(done, total, text)`` follows each step; ``should_stop()`` true cancels
    (``AdaptCancelled``), leaving ``out_dir`` untouched.
    """
    from .train import fit_tree
    from .train.config import Distributed, pick_device
    from .train.tree import check_out_dir

    config = config or AdaptConfig()
    started = time.perf_counter()
    base = TreeClassifier.load(models_dir)
    manifest, tree = base.manifest, base.tree
    if not manifest.get("trunk"):
        raise AdaptError(f"{base.models_dir}: adapting needs a tree with a shared trunk "
                         "(trained with `bloodcells train --shared-trunk`)")
    out_dir = Path(out_dir)
    if out_dir.resolve() == base.models_dir.resolve():
        raise AdaptError(f"{out_dir}: write the adapted tree to a new folder, not over the tree it starts from")
    check_out_dir(out_dir)  # before a minute of reading and scoring

    def step(done: int, total: int | None, text: str) -> None:
        if should_stop and should_stop():
            raise AdaptCancelled("adaptation cancelled: nothing was written")
        if progress:  # the app's Cancel acts at each call: reading and scoring took minutes without one
            progress(done, total, text)

    def reading(what: str) -> Callable[[int, int | None], None]:
        return lambda read, _: read % READ_STEP or step(0, None, f"reading {what}: {read}")

    log(f"reading the lab's cells from {labelled}")
    lab = load_dataset([labelled], tree, base.input_size, progress=reading("the lab's cells"))
    for problem in lab.problems:
        log(f"skipped: {problem}")
    lab = _distinct(lab, log)
    learn, held = _hold_out(lab, config)
    originals = _original_cells(base, replay, config.replay_per_label > 0, log, lab, reading("the original cells"))
    rng = np.random.default_rng(config.seed)
    split = _split_file(base.models_dir)
    seen, test_digests = split.get("seen", []), set(split.get("test", []))
    original_test = [i for i, digest in enumerate(originals.digests) if digest in test_digests]
    pool = [i for i, digest in enumerate(originals.digests) if digest not in test_digests]
    replay_train, replay_val = _replay_sample(originals.labels, pool, config.replay_per_label, rng)
    log(f"{len(learn)} lab cells to learn from, {len(held)} held back; replaying {len(replay_train)} of the "
        f"original training cells ({len(replay_val)} more for validation); {len(original_test)} original test cells")

    parts = {"learn": lab.subset(learn), "held": lab.subset(held), "replay_train": originals.subset(replay_train),
             "replay_val": originals.subset(replay_val), "original_test": originals.subset(original_test)}
    result = AdaptResult(out_dir, _base_versions(base), dict(Counter(parts["learn"].labels)), len(held),
                         len(replay_train))
    step(0, None, "scoring the tree before adapting")
    result.before = _scores(base, parts["held"], parts["original_test"])

    combined = CellDataset.concatenate(list(parts.values()))
    offsets = np.cumsum([0, *(len(part) for part in parts.values())])
    where = {name: np.arange(offsets[n], offsets[n + 1]) for n, name in enumerate(parts)}
    # validation: the replayed originals and the lab's own training cells (too few to spare any)
    splits = {"train": np.concatenate([where["learn"], where["replay_train"]]),
              "val": np.concatenate([where["replay_val"], where["learn"]]),
              "test": np.concatenate([where["held"], where["original_test"]])}
    train_config = _train_config(manifest, config)
    _, _, trunk_state = read_verified(base.models_dir / manifest["trunk"])
    tree_file = base.models_dir / "tree.yaml"
    try:
        fit_tree(combined, splits, out_dir, tree=tree, tree_file=tree_file if tree_file.is_file() else None,
                 config=train_config, manifest={"sources": manifest.get("sources", []),
                                                "adapted": {"base": result.base, "lab": str(labelled)}},
                 device=pick_device(), dist=Distributed(), progress=step, log=log, initial_trunk=trunk_state,
                 seen_before=seen)
    except BaseException:
        shutil.rmtree(out_dir.with_name(out_dir.name + ".training"), ignore_errors=True)
        raise
    step(0, None, "scoring the adapted tree")
    adapted = TreeClassifier.load(out_dir)
    result.after = _scores(adapted, parts["held"], parts["original_test"])
    result.seconds = time.perf_counter() - started
    _record(out_dir, result, str(labelled))
    log(result.summary())
    return result


def _distinct(lab: CellDataset, log) -> CellDataset:
    """Each image once: a cell exported twice (reviewed in two analyses) could otherwise be learnt and
    held back at once, inflating the "after" score. The same image under two labels is refused."""
    first: dict[str, int] = {}
    for index, digest in enumerate(lab.digests):
        kept = first.setdefault(digest, index)
        if lab.labels[kept] != lab.labels[index]:
            raise AdaptError(f"{lab.names[kept]} ({lab.labels[kept]}) and {lab.names[index]} ({lab.labels[index]}) "
                             "are the same image with different labels: keep the right one")
    if len(first) == len(lab):
        return lab
    log(f"{len(lab) - len(first)} duplicate images read once")
    return lab.subset(sorted(first.values()))


def _hold_out(lab: CellDataset, config: AdaptConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices to learn from and to hold back, stratified by label; too few cells is an error."""
    counts = Counter(lab.labels)
    short = {label: n for label, n in counts.items() if n < config.min_per_label}
    if short:
        raise AdaptError("too few cells to adapt on: " + ", ".join(f"{label} has {n}" for label, n in sorted(
            short.items())) + f" (each cell type needs at least {config.min_per_label}; label more, or leave it out)")
    everything = np.arange(len(lab))
    if not config.hold_out:
        return everything, everything[:0]
    from sklearn.model_selection import train_test_split

    held_count = max(len(counts), round(config.hold_out * len(lab)))  # one of each type at least
    if len(lab) - held_count < len(counts):  # and one of each left to learn from
        raise AdaptError(f"--hold-out {config.hold_out:g} holds back {held_count} of the {len(lab)} cells, leaving "
                         f"fewer than one of each of the {len(counts)} cell types to learn from: hold back less")
    learn, held = train_test_split(everything, test_size=held_count, stratify=lab.labels,
                                   random_state=config.seed)
    return np.sort(learn), np.sort(held)


def replay_unavailable(models_dir: str | Path | None = None) -> str | None:
    """Why the tree's original training cells cannot be replayed on this machine, or None when they can.
    A tree records the folders it was trained on; a lab's server often lacks them (the Training page
    trains from an upload it removes afterwards, and ``../shared`` is a development folder)."""
    from .classify import default_models_dir

    folder = default_models_dir() if models_dir is None else Path(models_dir)
    try:
        recorded = json.loads((folder / "classifier.json").read_text()).get("sources", [])
    except (OSError, ValueError):
        return None  # no readable tree: adapting says so itself, by name
    return _missing_sources([recorded_folder(s) for s in recorded])


def _missing_sources(sources: Sequence[Path]) -> str | None:
    uploads = settings().data_dir / "uploads"
    # a tree trained on the Training page records the scratch copy of its upload, removed afterwards
    missing = [f"the upload {s.name} it was trained from (removed after training)" if uploads in s.parents else str(s)
               for s in sources if not s.exists()]
    if sources and not missing:
        return None
    return f"{', '.join(missing) or 'no source'} {'is' if len(missing) == 1 else 'are'} not here"


def _original_cells(base: TreeClassifier, replay: Sequence[str | Path] | None, required: bool, log,
                    lab: CellDataset, progress: Callable[[int, int | None], None]) -> CellDataset:
    """The original training sources' cells; without them, an error, or (no replay asked for) none."""
    sources = ([Path(s) for s in replay] if replay
               else [recorded_folder(s) for s in base.manifest.get("sources", [])])
    missing = _missing_sources(sources)
    if missing:
        where = (f"{missing}: pass --replay with the folders the tree was trained on "
                 f"({', '.join(base.manifest.get('sources', [])) or 'unknown'})")
        if required:
            raise AdaptError("adapting replays the original training cells so that the original sites do not "
                             f"regress, and {where}, or --replay-per-label 0 to adapt without them (the tree "
                             "then learns only the lab's cell types)")
        log(f"not replayed nor scored: the original training cells ({where})")
        return lab.subset([])
    log(f"reading the original training cells from {', '.join(map(str, sources))}")
    return load_dataset(sources, base.tree, base.input_size, progress)


def _replay_sample(labels: Sequence[str], pool: Sequence[int], per_label: int,
                   rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Up to ``per_label`` cells per label to learn from and a quarter as many for validation (a fifth
    of the label's cells when it has fewer)."""
    if not per_label:
        return [], []
    by_label: dict[str, list[int]] = {}
    for index in pool:
        by_label.setdefault(labels[index], []).append(index)
    train, val = [], []
    for label in sorted(by_label):
        picked = rng.permutation(by_label[label])[:per_label + max(1, per_label // 4)]
        held = max(1, len(picked) // 5)
        val += picked[:held].tolist()
        train += picked[held:].tolist()
    return train, val


def _split_file(models_dir: Path) -> dict:
    split = models_dir / "split.json"
    return json.loads(split.read_text()) if split.is_file() else {}


def _base_versions(base: TreeClassifier) -> dict[str, str]:
    trunk = json.loads((base.models_dir / base.manifest["trunk"]).read_text())["sha256"]
    return {"trunk": trunk, **base.versions()}


def _train_config(manifest: dict, config: AdaptConfig):
    """The base tree's training recipe, with adaptation's budget (too few steps to average the
    weights over: they are kept as trained)."""
    from .train import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    recipe = TrainConfig(**{k: v for k, v in manifest["config"].items() if k in known})
    return replace(recipe, epochs=config.epochs, per_class=config.per_label, learning_rate=config.learning_rate,
                   layer_decay=config.layer_decay, patience=config.epochs + 1, seed=config.seed, nodes=None,
                   shared_trunk=True, balance_sources=True, ema=0.0, linear_probe=config.linear_probe)


def _scores(classifier: TreeClassifier, held: CellDataset, original_test: CellDataset) -> dict[str, Evaluation]:
    """Lab cells count as right when the answer is their label or a type below it (a coarse label)."""
    tree, outcome = classifier.tree, {}
    if len(held):
        results = classifier.classify_arrays(held.images)
        predicted = [label if tree.is_ancestor(tree[label], tree[r.code]) else r.code
                     for r, label in zip(results, held.labels, strict=True)]
        order = [node.code for node in tree.root.walk()]
        outcome["lab"] = Evaluation(cells=len(held), tree=Scores.of("lab", held.labels, predicted, order))
    if len(original_test):
        outcome["original"] = score(classifier, original_test)
    return outcome


def _record(out_dir: Path, result: AdaptResult, labelled: str) -> None:
    """The lineage and the before/after figures in the adapted folder's manifest."""
    from .train.files import write_json

    manifest_file = out_dir / "classifier.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["adapted"] = {**manifest.get("adapted", {}), "lab": labelled, **result.lineage()}
    write_json(manifest_file, manifest)



def reviewed_cells_zip(store, analysis_ids: Sequence[int]) -> tuple[bytes, Counter]:
    """The cells a person reviewed in the given analyses, as a zip of class folders (their final
    labels), and how many there are per label. An image reviewed in several analyses (the same zip
    classified twice) counts once, with the label of the latest analysis."""
    from .report import labelled_zip, reviewed_cells
    from .store import sha256_hex

    cells: dict[str, tuple[str, str, bytes]] = {}
    for analysis_id in sorted(analysis_ids):
        analysis = store.get_analysis(analysis_id)
        analysis.predictions = [p for p in analysis.predictions if p.reviewed]  # as the Review page's export
        cells.update((sha256_hex(cell[2]), cell) for cell in reviewed_cells(store, analysis))
    return labelled_zip(cells.values()), Counter(label for _, label, _ in cells.values())


def adapt_from_reviews(store, analysis_ids: Sequence[int], person: str, out_dir: str | Path, *,
                       models_dir: str | Path | None = None, config: AdaptConfig | None = None,
                       progress: Callable[[int, int, str], None] | None = None,
                       log: Callable[[str], None] = print) -> tuple[int, AdaptResult]:
    """The app's "adapt the models to this lab": the reviewed cells of ``analysis_ids`` adapt the tree;
    the result is recorded as a candidate model version with its lineage. Returns its id and the result."""
    import tempfile

    from .store.schema import utcnow

    if not person.strip():
        raise AdaptError("enter your name: the new model version records who made it")
    if not analysis_ids:
        raise AdaptError("choose at least one analysis whose reviewed cells the models should learn from")
    started_at = utcnow()
    content, counts = reviewed_cells_zip(store, analysis_ids)
    if not counts:
        raise AdaptError("the chosen analyses have no reviewed cells: review some cells first")
    made_here = not Path(out_dir).exists()
    with tempfile.TemporaryDirectory() as scratch:
        labelled = Path(scratch) / "reviewed-cells.zip"
        labelled.write_bytes(content)
        try:
            result = adapt(labelled, out_dir, models_dir=models_dir, config=config, progress=progress, log=log)
            if progress:  # a Cancel clicked while the adapted tree was scored acts here, before it is offered
                progress(0, None, "recording the candidate")
        except BaseException:
            # cancelled once the tree was written: "nothing was kept" was said, and the candidate was offered
            if made_here:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
    tree = json.loads((result.out_dir / "classifier.json").read_text())["tree"]
    version_id = store.record_model_version(tree=tree, kind="adapted", folder=str(result.out_dir), base=result.base,
                                            cells=sum(result.lab_counts.values()) + result.held_out,
                                            analyses=list(analysis_ids), figures=result.figures(),
                                            started_by=person, started_at=started_at)
    return version_id, result
