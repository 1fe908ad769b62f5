"""Labelled cell images for training and evaluation: reading, labels, splits, balancing, augmentation.

Sources are folders of class sub-folders (any depth), zips of the same, or CSV files
(``path,label`` and optionally a ``patient``/``slide`` column). Labels resolve through the tree
(``Tree.label_for_file`` for files, ``Tree.resolve`` for CSV labels). Every image is decoded and
resized once per run into one uint8 array that all nodes and epochs share.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .inputs import InputError, InputImage, iter_inputs, open_image
from .taxonomy import Tree, UnknownLabelError

GROUP_COLUMNS = ("patient", "patient_id", "slide", "slide_id", "group")
SPLITS = ("train", "val", "test")


@dataclass
class CellDataset:
    """Decoded cells of one run: ``images[i]`` is an ``size``x``size`` RGB uint8 array."""
    names: list[str]
    labels: list[str]  # node codes (a leaf, or an inner node for coarse labels such as 'ig')
    sources: list[str]
    groups: list[str | None]
    digests: list[str]  # sha256 of each file's bytes
    images: np.ndarray
    size: int
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 over the (content, label) pairs: the same data gives the same fingerprint."""
        from .store import sha256_hex

        pairs = sorted(zip(self.digests, self.labels, strict=True))
        return sha256_hex("".join(f"{digest}:{label}\n" for digest, label in pairs).encode())

    @classmethod
    def concatenate(cls, parts: Sequence[CellDataset]) -> CellDataset:
        """One dataset of ``parts`` in order (all decoded at the same size)."""
        if len({part.size for part in parts}) != 1:
            raise ValueError(f"cannot join cells decoded at different sizes: {sorted({p.size for p in parts})}")
        return cls([n for p in parts for n in p.names], [x for p in parts for x in p.labels],
                   [x for p in parts for x in p.sources], [x for p in parts for x in p.groups],
                   [x for p in parts for x in p.digests], np.concatenate([p.images for p in parts]), parts[0].size,
                   [x for p in parts for x in p.problems])

    def subset(self, indices: Sequence[int]) -> CellDataset:
        pick = list(indices)
        return CellDataset([self.names[i] for i in pick], [self.labels[i] for i in pick],
                           [self.sources[i] for i in pick], [self.groups[i] for i in pick],
                           [self.digests[i] for i in pick], self.images[pick], self.size, self.problems)


def _iter_labelled(source: Path, tree: Tree) -> Iterable[tuple[str, str, bytes, str | None] | str]:
    """(name, label code, content, group) for each image of a source, or a problem string."""
    if source.suffix.lower() == ".csv":
        yield from _iter_csv(source, tree)
        return
    prefix = source.stem if source.suffix.lower() == ".zip" else source.name
    for item in iter_inputs(source):
        if not isinstance(item, InputImage):
            yield f"{source.name}/{item.name}: {item.problem}"
            continue
        try:
            node = tree.label_for_file(PurePosixPath(prefix) / item.name)
        except UnknownLabelError as error:  # named within what the user gave (an upload's path is the server's)
            outside = "/" not in item.name and source.suffix.lower() == ".zip"
            where = (f"{source.name}: {item.name} is in no class folder, so its type would be the zip's name"
                     if outside else f"{source.name}: {item.name}")
            raise UnknownLabelError(error.label, error.suggestions, where=where) from None
        yield item.name, node.code, item.content, None


def _iter_csv(path: Path, tree: Tree) -> Iterable[tuple[str, str, bytes, str | None] | str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in columns or "label" not in columns:
            raise InputError(f"{path}: a training CSV needs the columns 'path' and 'label' "
                             f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
        group_column = next((columns[c] for c in GROUP_COLUMNS if c in columns), None)
        for line, row in enumerate(reader, start=2):
            name, label = (row[columns["path"]] or "").strip(), (row[columns["label"]] or "").strip()
            try:
                code = tree.resolve(label).code
            except UnknownLabelError as error:
                raise UnknownLabelError(label, error.suggestions, where=f"{path.name}, line {line}") from None
            file = (path.parent / name)
            if not file.is_file():
                yield f"{path.name}, line {line}: {name}: no such file"
                continue
            yield name, code, file.read_bytes(), (row[group_column] or None) if group_column else None


def load_dataset(sources: Iterable[str | Path], tree: Tree, size: int,
                 progress: Callable[[int, int | None], None] | None = None) -> CellDataset:
    """Read, label, decode and resize every image of ``sources`` once."""
    from PIL import Image

    from .store import sha256_hex

    names, labels, origins, groups, digests, images, problems = [], [], [], [], [], [], []
    for source in map(Path, sources):
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
        for entry in _iter_labelled(source, tree):
            if isinstance(entry, str):
                problems.append(entry)
                continue
            name, code, content, group = entry
            if code == tree.root.code:  # teaches no node: it was left out without a word
                problems.append(f"{source.name}/{name}: labelled {tree.root.title} (the tree's "
                                "root), which says no cell type: put it in a class folder")
                continue
            try:
                image = open_image(content, f"{source.name}/{name}", at_least=size)  # decoded as classify does
            except InputError as error:
                problems.append(str(error))
                continue
            images.append(np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)))
            names.append(name)
            labels.append(code)
            origins.append(source.name)
            groups.append(group)
            digests.append(sha256_hex(content))
            if progress:
                progress(len(images), None)
    if not images:
        raise InputError(f"no labelled images in {', '.join(map(str, sources))}")
    return CellDataset(names, labels, origins, groups, digests,
                       np.stack(images), size, problems)


# -- per-node views ---------------------------------------------------------------------------
def node_targets(tree: Tree, node_code: str, labels: Sequence[str]) -> dict[int, str]:
    """Index -> child of ``node_code`` for every label at or below one of its children.

    A label at ``node_code`` itself or above it says nothing about which child it is, so it is
    left out: a coarse label trains only the nodes above it.
    """
    targets = {}
    for index, label in enumerate(labels):
        if label != node_code and label in tree:
            child = tree.child_towards(node_code, label)
            if child is not None:
                targets[index] = child.code
    return targets


def count_table(tree: Tree, labels: Sequence[str]) -> dict[str, Counter]:
    """Inner node -> images per child (only nodes with at least one labelled image below)."""
    table = {}
    for node in tree.inner_nodes():
        counts = Counter(node_targets(tree, node.code, labels).values())
        if counts:
            table[node.code] = counts
    return table


def format_count_table(tree: Tree, table: dict[str, Counter], balanced: dict[str, int] | None = None) -> str:
    """The table printed before training: per node, images per child and the balancing target."""
    lines = []
    for code, counts in table.items():
        target = f"  -> {balanced[code]} per child after balancing" if balanced and code in balanced else ""
        trained = "" if len(counts) > 1 else "  (one child only: not trained, always descends)"
        lines.append(f"{tree.path_codes(code)}{target}{trained}")
        for child in tree.children(code):
            if counts.get(child.code):
                lines.append(f"    {child.code:<5} {child.name:<28} {counts[child.code]:>6}")
    return "\n".join(lines)


# -- splits -----------------------------------------------------------------------------------
def split_indices(labels: Sequence[str], groups: Sequence[str | None] | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic 8/1/1 train/val/test split, stratified by label.

    When every image has a group (patient or slide id), whole groups go to one split, so one
    patient never straddles train and test.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    grouped = groups is not None and len(groups) > 0 and all(g is not None for g in groups)
    group_ids = np.asarray(groups) if grouped else np.arange(len(labels))
    folds = np.zeros(len(labels), dtype=int)
    if len(labels) and np.unique(labels, return_counts=True)[1].max() >= 10:
        splitter = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
        import warnings

        with warnings.catch_warnings():  # classes smaller than 10 are fine: they get fewer folds
            warnings.simplefilter("ignore", UserWarning)
            for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, group_ids)):
                folds[held] = fold
    else:  # no type has 10 cells to stratify: whole groups (or cells) dealt round the folds at random
        groups_present, group_of = np.unique(group_ids, return_inverse=True)
        folds = (np.random.default_rng(seed).permutation(len(groups_present)) % 10)[group_of]
    return {"test": np.flatnonzero(folds == 0), "val": np.flatnonzero(folds == 1),
            "train": np.flatnonzero(folds >= 2)}


# -- balancing --------------------------------------------------------------------------------
def balance_target(counts: Counter, min_per_class: int = 1000, per_class: int | None = None) -> int:
    """Images per child after balancing: ``per_class`` if given, else the smallest child's count
    but never below ``min_per_class``."""
    if per_class:
        return per_class
    return max(min(counts.values()), min_per_class)


def per_source(targets: dict[int, str], sources: Sequence[str]) -> dict[int, tuple[str, str]]:
    """``targets`` keyed by (child, source): balancing then gives each source of a child as many images
    (a lab's few cells of a type weigh as much as the original sources' many)."""
    return {index: (child, sources[index]) for index, child in targets.items()}


def balanced_indices(targets: dict[int, str], target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices for one epoch with ``target`` images per child, and which of them are repeats.

    Children above the target are undersampled (a fresh draw each epoch, so all images serve);
    children below it are repeated, and repeats are marked so that they get augmented.
    """
    by_child: dict[str, list[int]] = {}
    for index, child in targets.items():
        by_child.setdefault(child, []).append(index)
    chosen, repeats = [], []
    for child in sorted(by_child):
        pool = np.asarray(by_child[child])
        if len(pool) >= target:
            picked = rng.choice(pool, size=target, replace=False)
            chosen.append(picked)
            repeats.append(np.zeros(target, dtype=bool))
        else:
            extra = rng.choice(pool, size=target - len(pool), replace=True)
            chosen.append(np.concatenate([pool, extra]))
            repeats.append(np.concatenate([np.zeros(len(pool), bool), np.ones(len(extra), bool)]))
    order = rng.permutation(sum(len(c) for c in chosen))
    return np.concatenate(chosen)[order], np.concatenate(repeats)[order]


# -- augmentation -----------------------------------------------------------------------------
def augmentation(cross_site: bool = False, seed: int | None = None, plain_background: float = 0.0):
    """Albumentations pipeline for microscopy cells; with ``seed``, the same draws on every run (a
    training run is then reproducible, whatever ran before it in the process).

    Always: rotation by any angle, flips, gamma, brightness/contrast, blur or sharpen, a mild
    hue/saturation (stain) shift. ``cross_site`` adds what differs between labs: stronger colour
    and stain changes (H&E-style stain jitter), white balance, and magnification (scale).
    ``plain_background``: the share of images whose surroundings of the centred cell become a
    plain field first (``background.PlainBackground``), so the cell alone carries the answer.
    """
    import albumentations as A
    import cv2

    from .background import PlainBackground

    steps = [PlainBackground(p=plain_background)] if plain_background else []
    steps += [
        A.Rotate(limit=180, border_mode=cv2.BORDER_REFLECT_101, p=0.9),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 1.0)),
                 A.Sharpen(alpha=(0.1, 0.3), lightness=(0.9, 1.1))], p=0.4),
        A.HueSaturationValue(hue_shift_limit=6, sat_shift_limit=12, val_shift_limit=8, p=0.5),
    ]
    if cross_site:
        steps += [
            A.Affine(scale=(0.7, 1.35), translate_percent=(-0.06, 0.06), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.HEStain(method="random_preset", p=0.3),
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=35, val_shift_limit=20, p=0.6),
            A.PlanckianJitter(p=0.3),
            A.ToGray(p=0.05),
        ]
    return A.Compose(steps, seed=seed)


# -- tensors ----------------------------------------------------------------------------------
def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float], per_image: bool = False):
    """uint8 NHWC images -> normalised float NCHW tensor.

    ``per_image`` standardises each image's channels by its own mean and spread first (a simple
    stain/colour normalisation: a slide stained bluer or redder than the training ones looks the
    same after it), then applies the model's ``mean``/``std`` to the result mapped back to [0, 1].
    """
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    if per_image:
        centre = batch.mean(dim=(2, 3), keepdim=True)
        spread = batch.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        batch = ((batch - centre) / spread * 0.2 + 0.5).clamp_(0, 1)
    mean_t = torch.tensor(mean, dtype=batch.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t
