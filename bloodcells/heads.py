"""A shared trunk with a head per tree node: each node its own classifier, one network pass per cell.

Why: a fine-tuned ImageNet EfficientNet-Lite0 per node would run the tree's five networks on a
cell that goes to the bottom of it (about 35 cells/s on a 2-core CPU). Here one network (the
trunk) is fine-tuned on every cell type at once, balanced per type, and each inner node gets its
own linear head on the trunk's pooled features, trained on that node's own data, balanced per
child as before. The trunk runs once per cell; the heads cost next to nothing.

Heads learn from the trunk's features of the training cells, each seen as it is and in
``config.head_views - 1`` augmented views (the same augmentation as the trunk's), and stop on
validation loss. On disk: ``trunk.safetensors`` + ``trunk.json`` beside the usual
``<code>.safetensors`` (the head's weight and bias) + ``<code>.json`` (with ``"trunk"`` set).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .data import balanced_indices, per_source, to_tensor

TRUNK = "trunk"  # the trunk's name in files and logs (not a tree code: codes are upper case)
HEAD_EPOCHS, HEAD_PATIENCE, HEAD_BATCH, HEAD_LEARNING_RATE = 80, 12, 256, 3e-3
VIEW_BATCH = 256  # training cells augmented at a time (by one worker) for the heads' views


def trunk_with_head(trunk, head):
    """One node's network: ``trunk`` (a timm model without classifier) then the node's linear ``head``.

    It has timm's ``forward_features``/``forward_head`` so explanations and the morphology head
    treat it like any timm model. Modules, not copies: every node shares the trunk's parameters.
    """
    from torch import nn

    class TrunkWithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = trunk, head

        def forward(self, inputs):
            return self.head(self.trunk(inputs))

        def forward_features(self, inputs):
            return self.trunk.forward_features(inputs)

        def forward_head(self, features, pre_logits: bool = False):
            pooled = self.trunk.forward_head(features, pre_logits=True)
            return pooled if pre_logits else self.head(pooled)

    return TrunkWithHead()


FLIPS = ((), (3,), (2,), (2, 3))  # as it is, left-right, up-down, both: a cell has no up or left


def features(trunk, images: np.ndarray, mean, std, stain_norm: bool, batch_size: int = 32, device=None,
             flips: bool = False) -> np.ndarray:
    """The trunk's pooled features (N x D, float32) of uint8 NHWC ``images``; with ``flips``, their
    mean over the four flips of each image (test-time augmentation: 4x the time)."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = to_tensor(images[start:start + batch_size], mean, std, stain_norm)
            batch = batch.to(device or "cpu", memory_format=torch.channels_last)
            pooled = sum(trunk(batch.flip(dims) if dims else batch) for dims in FLIPS) / len(FLIPS) \
                if flips else trunk(batch)
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, pooled_width(trunk)), np.float32)


def frozen_for_inference(trunk, input_size: int):
    """``trunk`` traced and frozen by TorchScript, for classifying: freezing folds each batch norm
    into its convolution and drops what inference does not run. On a 2-core CPU (batch 32,
    channels-last) EfficientNet-Lite0 runs 1.45x the eager module's images/s at 112 px and 1.8x
    at 128 px. Explanations keep the eager module (captum hooks its layers); the frozen copy holds
    its own weights, so it is made from a trunk that no longer changes (a loaded tree)."""
    import warnings

    import torch

    example = torch.zeros(2, 3, input_size, input_size).to(memory_format=torch.channels_last)
    # torch marks TorchScript deprecated in favour of torch.compile, whose CPU backend needs a C++
    # compiler on the server and compiles for tens of seconds; TorchScript still works, so its
    # FutureWarnings are not passed on to every user who loads a tree.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        return torch.jit.freeze(torch.jit.trace(trunk.eval(), example))


def pooled_width(trunk) -> int:
    """Width of the trunk's pooled features: after MobileNetV3's head convolution, not before it."""
    return getattr(trunk, "head_hidden_size", None) or trunk.num_features


def train_heads(trunk, views: dict, dataset, splits: dict, per_child: dict[str, int], config, device,
                log: Callable[[str], None], step: Callable[[str, str], None] | None = None,
                note: Callable[[str], None] = lambda _text: None) -> dict[str, tuple]:
    """A linear head per node of ``views`` (code -> ``train.NodeView``) on the trunk's features.

    Returns code -> (metrics, head state dict). ``step(code, text)`` is called once per head, ``note(text)``
    before each pass over the cells' features (a page's Cancel acts at such calls: the passes took minutes
    between two steps).
    """
    import torch
    from torch import nn

    from .backbones import node_network, normalisation
    from .train.views import BatchRequest, CellViews

    trunk.eval()
    mean, std = normalisation(trunk)
    train, val = np.asarray(splits["train"]), np.asarray(splits["val"])
    started = time.perf_counter()
    note(f"features of the training cells, view 1 of {config.head_views}")
    clean = features(trunk, dataset.images[train], mean, std, config.stain_norm, device=device)
    views_of_train = [clean]
    rng = np.random.default_rng(config.seed)
    with CellViews(dataset.images, seed=config.seed, cross_site=config.cross_site,
                   plain_background=config.plain_background, with_masks=bool(config.plain_background),
                   workers=config.workers if config.head_views > 1 else 0) as cell_views:
        every = np.ones(len(train), bool)
        for view in range(1, config.head_views):
            note(f"features of the training cells, view {view + 1} of {config.head_views}")
            requests = [BatchRequest((view, start), train[start:start + VIEW_BATCH], every[start:start + VIEW_BATCH])
                        for start in range(0, len(train), VIEW_BATCH)]
            augmented = np.concatenate([images for images, _ in cell_views.map(requests)])
            views_of_train.append(features(trunk, augmented, mean, std, config.stain_norm, device=device))
    train_features = torch.from_numpy(np.stack(views_of_train))  # V x N_train x D
    note("features of the validation cells")
    val_features = torch.from_numpy(features(trunk, dataset.images[val], mean, std, config.stain_norm,
                                             device=device))
    position = {index: n for n, index in enumerate(train)}
    log(f"[{TRUNK}] features of {len(train)} training cells x {config.head_views} views and {len(val)} "
        f"validation cells in {time.perf_counter() - started:.0f} s")

    trained = {}
    for code, view in views.items():
        torch.manual_seed(config.seed)
        class_index = {c: n for n, c in enumerate(view.classes)}
        output_index = {label: n for n, label in enumerate(view.outputs)}
        groups = [class_index[child] for child in view.outputs.values()]
        head = nn.Linear(train_features.shape[-1], len(view.outputs))
        grouped = node_network(head, groups, len(view.classes))
        train_targets = {i: view.targets[i] for i in train if view.targets.get(i) in class_index}
        val_rows = [n for n, i in enumerate(val) if view.targets.get(i) in class_index]
        val_x = val_features[val_rows]
        val_y = torch.as_tensor([class_index[view.targets[val[n]]] for n in val_rows], dtype=torch.long)
        optimiser = torch.optim.AdamW(head.parameters(), lr=HEAD_LEARNING_RATE, weight_decay=config.weight_decay)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        best = {"val_loss": float("inf"), "epoch": 0, "state": None, "val_accuracy": float("nan")}
        history = []
        for epoch in range(1, HEAD_EPOCHS + 1):
            order, _ = balanced_indices(per_source(train_targets, dataset.sources) if config.balance_sources
                                        else train_targets, per_child[code], rng)
            which_view = torch.from_numpy(rng.integers(0, len(views_of_train), len(order)))
            rows = torch.as_tensor([position[i] for i in order])
            labels = torch.as_tensor([output_index[dataset.labels[i]] for i in order])
            head.train()
            for start in range(0, len(order), HEAD_BATCH):
                pick = slice(start, start + HEAD_BATCH)
                loss = loss_fn(head(train_features[which_view[pick], rows[pick]]), labels[pick])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            head.eval()
            with torch.inference_mode():
                scores = grouped(val_x)
                val_loss = float(nn.functional.cross_entropy(scores, val_y)) if len(val_y) else float("nan")
                val_accuracy = float((scores.argmax(1) == val_y).float().mean()) if len(val_y) else float("nan")
            history.append({"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_accuracy})
            if val_loss < best["val_loss"] - 1e-4 or best["state"] is None:
                best = {"val_loss": val_loss, "epoch": epoch, "val_accuracy": val_accuracy,
                        "state": {k: v.detach().clone() for k, v in head.state_dict().items()}}
            elif epoch - best["epoch"] >= HEAD_PATIENCE:
                break
        log(f"[{code}] head on the trunk: classes {', '.join(view.classes)}; best epoch {best['epoch']}: "
            f"val loss {best['val_loss']:.3f} acc {best['val_accuracy']:.3f}")
        metrics = {"classes": view.classes, "outputs": view.outputs, "mean": list(mean), "std": list(std),
                   "best_epoch": best["epoch"], "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"],
                   "history": history, "train_counts": {c: sum(1 for t in train_targets.values() if t == c)
                                                        for c in view.classes},
                   "per_child_per_epoch": per_child[code], "head": "linear on the shared trunk"}
        trained[code] = (metrics, best["state"])
        if step:
            step(code, f"head trained (val accuracy {best['val_accuracy']:.3f})")
    return trained


def train_shared(dataset, splits: dict, tree, codes: list[str], per_child: dict[str, int], config, device,
                 dist, log: Callable[[str], None], progress, on_epoch, folder: Path,
                 fingerprint: str, initial_trunk: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """Fine-tune the trunk on every label, then a head per node in ``codes``; write them to ``folder``.

    Returns the trunk's metrics and code -> the head's metrics. ``progress(done, total, text)``: one
    step per trunk epoch and per head; ``on_epoch(TRUNK, record)`` after each epoch of the trunk.
    ``initial_trunk``: a trained trunk's weights to start from (adapting a tree to a new lab);
    with ``config.epochs`` 0 it is kept as it is and only the heads learn.
    """
    from .train import fit_network, labels_view, node_view, save_node

    total, done = config.epochs + len(codes), 0

    def step(code: str, text: str) -> None:
        nonlocal done
        done += 1
        note(f"{code}: {text}")

    def note(text: str) -> None:  # progress without a step done
        if progress and dist.main:
            progress(done, total, text)

    trunk_view = labels_view(tree, dataset, splits["train"])
    per_label = config.per_class or max(config.min_per_class // 4, 1)
    log(f"[{TRUNK}] {config.architecture} learns {len(trunk_view.classes)} labels, {per_label} per label per epoch")
    def trunk_epoch(record: dict) -> None:
        step(TRUNK, f"epoch {record['epoch']}/{config.epochs}")
        if on_epoch:
            on_epoch(TRUNK, record)

    if config.epochs and initial_trunk is not None and config.linear_probe:
        initial_trunk = initial_trunk | _probed_classifier(initial_trunk, trunk_view, dataset, splits, per_label,
                                                           config, device, log)
    if config.epochs or initial_trunk is None:
        trunk_metrics, trunk_state = fit_network(trunk_view, dataset, splits, per_label, config, device, dist, log,
                                                 trunk_epoch, initial=initial_trunk,
                                                 still_wanted=lambda: note(f"{TRUNK}: epoch {done + 1} running"))
    else:
        log(f"[{TRUNK}] kept as it was: only the heads learn")
        trunk_metrics = {"classes": trunk_view.classes, "outputs": trunk_view.outputs, "history": []}
        trunk_state = initial_trunk
    done = config.epochs  # early stopping skips epochs: the heads' steps follow on
    if not dist.main:
        return trunk_metrics, {}
    from .backbones import normalisation

    trunk, trunk_state = _headless_trunk(trunk_state, config, device)
    trunk_metrics = dict(zip(("mean", "std"), map(list, normalisation(trunk)), strict=True)) | trunk_metrics
    trunk_file = save_node(folder, TRUNK, trunk_state, trunk_metrics, config, fingerprint)
    views = {code: node_view(tree, code, dataset, splits["train"]) for code in codes}
    metrics = {}
    for code, (head_metrics, state) in train_heads(trunk, views, dataset, splits, per_child, config, device,
                                                   log, step, note).items():
        save_node(folder, code, state, head_metrics, config, fingerprint, trunk=trunk_file)
        metrics[code] = head_metrics
    return trunk_metrics, metrics


def _headless_trunk(state: dict, config, device):
    """The trunk network of ``state`` (its classifier's tensors left out) on ``device``, and the
    state it holds."""
    import torch

    from .backbones import classifier_prefix, create_model

    trunk = create_model(config.architecture, 0, img_size=config.input_size)
    state = {k: v for k, v in state.items() if not k.startswith(classifier_prefix(trunk))}
    trunk.load_state_dict(state)
    return trunk.to(device).to(memory_format=torch.channels_last), state


def _probed_classifier(trunk_state: dict, view, dataset, splits: dict, per_label: int, config, device,
                       log: Callable[[str], None]) -> dict:
    """The trunk's classifier for ``view``'s labels, fitted as a linear head on the features of
    ``trunk_state`` (the trunk frozen): fine-tuning then starts from a classifier that already fits
    the features (linear probing then fine-tuning, Kumar et al., ICLR 2022), instead of a random one
    whose first gradients would pull the trained features towards it."""
    from .backbones import classifier_prefix

    trunk, _ = _headless_trunk(trunk_state, config, device)
    (_, head), = train_heads(trunk, {TRUNK: view}, dataset, splits, {TRUNK: per_label}, config, device,
                             log).values()
    log(f"[{TRUNK}] linear probe: fine-tuning starts from this classifier")
    return {f"{classifier_prefix(trunk)}{name}": tensor for name, tensor in head.items()}


def load_trunk(models_dir: Path, metadata_file: str):
    """The trunk of a tree folder (verified by sha256) and its metadata."""
    from .backbones import create_model
    from .classify import ModelFileError, read_verified

    metadata, weights, state = read_verified(models_dir / metadata_file)
    try:
        trunk = create_model(metadata["architecture"], 0, img_size=int(metadata["input_size"]))
        trunk.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"{weights}: cannot load into {metadata['architecture']} ({error})") from error
    import torch

    return trunk.float().eval().to(memory_format=torch.channels_last), metadata
