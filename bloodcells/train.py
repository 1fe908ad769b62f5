"""Training the tree: one timm classifier per inner node, on labelled cells.

``train_tree`` reads and decodes the data once, splits it 8/1/1 (the same split for every node,
so a test image is never trained on anywhere in the tree), prints the per-node count table,
trains every node that has at least two children with data (AdamW, cosine schedule, label
smoothing, early stopping on validation loss, best checkpoint kept), calibrates the review
threshold on validation cells and writes the models with their metadata (see ``classify`` for
the format). Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import (
    CellDataset,
    augmentation,
    balance_target,
    balanced_indices,
    count_table,
    format_count_table,
    load_dataset,
    node_targets,
    split_indices,
    to_tensor,
)
from .heads import TRUNK
from .taxonomy import TREES_DIR, Tree, load_tree

MODES = {  # mode -> (pretrained weights, augment every image; otherwise only oversampled repeats)
    "scratch": (False, False),
    "scratch+aug": (False, True),
    "pretrained": (True, False),
    "pretrained+aug": (True, True),
}
FORMAT_VERSION = 1

Progress = Callable[[int, int, str], None]
EpochCallback = Callable[[str, dict], None]  # (network name, that epoch's record)


@dataclass
class TrainConfig:
    architecture: str = "mobilenetv3_small_100"
    input_size: int = 96
    mode: str = "scratch+aug"
    pretrained_checkpoint: str | None = None  # local weights for the pretrained modes
    cross_site: bool = True  # stronger stain/colour and scale augmentation
    stain_norm: bool = True  # per-image colour standardisation before the network
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    patience: int = 4
    min_per_class: int = 1000
    per_class: int | None = None
    seed: int = 0
    review_accuracy: float = 0.97  # needs_review below the confidence that keeps this accuracy
    nodes: Sequence[str] | None = None  # train only these nodes (default: all that have data)
    shared_trunk: bool = False  # one network for all nodes, a head per node (bloodcells.heads)
    head_views: int = 3  # shared trunk: features of each training cell as it is + augmented views

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} (modes: {', '.join(MODES)})")


@dataclass
class TrainReport:
    out_dir: Path
    nodes: dict[str, dict] = field(default_factory=dict)  # code -> metrics
    trunk: dict | None = None  # the shared trunk's metrics, when the nodes share one
    passthrough: dict[str, str] = field(default_factory=dict)
    count_table: str = ""
    review_threshold: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# -- distributed ------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _device():
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


# -- the tree ---------------------------------------------------------------------------------
def train_tree(sources: Sequence[str | Path], out_dir: str | Path | None = None, *,
               tree: str | Path | Tree | None = None, config: TrainConfig | None = None,
               store=None, progress: Progress | None = None, log: Callable[[str], None] = print,
               on_epoch: EpochCallback | None = None) -> TrainReport:
    """Train every inner node of ``tree`` that has data and write the models to ``out_dir``.

    ``on_epoch(network, record)`` follows each epoch of each network (a node's, or the shared trunk)
    with its record: epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds.
    """
    import torch

    config = config or TrainConfig()
    tree_file = _tree_file(tree)
    tree = tree if isinstance(tree, Tree) else load_tree(tree_file)
    from .settings import settings

    out_dir = Path(out_dir) if out_dir else settings().models_dir / "classifier" / tree.name
    device = _device()
    dist = _init_distributed(device)
    say = log if dist.main else (lambda _text: None)
    if device.type == "cpu" and dist.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world))
    if dist.world > 1:
        say(f"DistributedDataParallel over {dist.world} processes ({'nccl' if device.type == 'cuda' else 'gloo'})")
    started = time.perf_counter()
    pretrained, _ = MODES[config.mode]
    if pretrained:  # fail before the slow part when the weights cannot be had
        from .backbones import create_model

        create_model(config.architecture, 2, pretrained=config.pretrained_checkpoint or True,
                     img_size=config.input_size)

    say(f"reading {', '.join(map(str, sources))} (decoded once at {config.input_size} px)")
    dataset = load_dataset(sources, tree, config.input_size)
    for problem in dataset.problems:
        say(f"skipped: {problem}")
    splits = split_indices(dataset.labels, dataset.groups, seed=config.seed)
    say(f"{len(dataset)} images: {len(splits['train'])} train, {len(splits['val'])} val, "
        f"{len(splits['test'])} test" + (" (grouped by patient/slide)" if all(dataset.groups) else ""))
    train_labels = [dataset.labels[i] for i in splits["train"]]
    table = count_table(tree, train_labels)
    targets_per_node = {code: balance_target(counts, config.min_per_class, config.per_class)
                        for code, counts in table.items() if len(counts) > 1}
    report = TrainReport(out_dir=out_dir, problems=dataset.problems)
    report.count_table = format_count_table(tree, table, targets_per_node)
    say("training images per node and child (train split):\n" + report.count_table)
    report.passthrough = {code: next(iter(counts)) for code, counts in table.items() if len(counts) == 1}
    to_train = [code for code in targets_per_node if not config.nodes or code in config.nodes]

    staging = out_dir.with_name(out_dir.name + ".training")
    if dist.main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    if config.shared_trunk:
        from .heads import train_shared

        report.trunk, report.nodes = train_shared(dataset, splits, tree, to_train, targets_per_node, config, device,
                                                  dist, say, progress, on_epoch, staging, dataset.fingerprint())
    else:
        _train_separately(dataset, splits, tree, to_train, targets_per_node, config, device, dist, say, progress,
                          on_epoch, staging, report)
    if dist.world > 1:
        import torch.distributed as torch_dist

        torch_dist.barrier()
    if not dist.main:
        return report

    manifest = {
        "format": FORMAT_VERSION, "tree": tree.name, "nodes": to_train, "passthrough": report.passthrough,
        "trunk": f"{TRUNK}.json" if config.shared_trunk else None,
        "data_fingerprint": dataset.fingerprint(), "sources": [str(s) for s in sources],
        "config": asdict(config), "count_table": report.count_table,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "review_threshold": 0.0, "review_accuracy": config.review_accuracy,
    }
    if tree_file is not None:
        shutil.copyfile(tree_file, staging / "tree.yaml")
    _write_json(staging / "split.json", {  # so evaluation scores only cells training never saw
        "seed": config.seed, "test": sorted(dataset.digests[i] for i in splits["test"]),
        "seen": sorted(dataset.digests[i][:16] for i in (*splits["train"], *splits["val"]))})
    _write_json(staging / "classifier.json", manifest)
    report.review_threshold = _calibrate(staging, dataset.subset(splits["val"]), config.review_accuracy)
    manifest["review_threshold"] = report.review_threshold
    _write_json(staging / "classifier.json", manifest)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    if store is not None:
        register_models(store, out_dir, tree)
    report.seconds = time.perf_counter() - started
    say(f"models written to {out_dir} in {report.seconds:.0f} s; review threshold "
        f"{report.review_threshold:.3f} (keeps {config.review_accuracy:.0%} accuracy on validation cells)")
    return report


def _train_separately(dataset, splits, tree, to_train, targets_per_node, config, device, dist, say, progress,
                      on_epoch, staging, report) -> None:
    """A network of its own for each node in ``to_train``."""
    total_steps = len(to_train) * config.epochs
    done_steps = 0
    for code in to_train:
        def step(record: dict, _code=code):
            nonlocal done_steps
            done_steps += 1
            if progress:
                progress(done_steps, total_steps, f"{_code}: epoch {record['epoch']}/{config.epochs}")
            if on_epoch:
                on_epoch(_code, record)

        metrics, state = train_node(dataset, splits, tree, code, targets_per_node[code], config,
                                    device, dist, say, step)
        done_steps = to_train.index(code) * config.epochs + config.epochs
        if dist.main:
            save_node(staging, code, state, metrics, config, dataset.fingerprint())
        report.nodes[code] = metrics


def _tree_file(tree) -> Path | None:
    if tree is None or isinstance(tree, Tree):
        return None if tree is not None else TREES_DIR / "default.yaml"
    path = Path(tree)
    return path if path.suffix in {".yaml", ".yml"} else TREES_DIR / f"{tree}.yaml"


# -- one node ---------------------------------------------------------------------------------
@dataclass
class NodeView:
    """What one network learns: ``targets`` (index -> class) over the whole dataset, the
    ``classes`` it answers for, and the ``outputs`` it learns (label -> the class it lies under)."""
    name: str
    targets: dict[int, str]
    classes: list[str]
    outputs: dict[str, str]


def node_view(tree: Tree, code: str, dataset: CellDataset, train: np.ndarray) -> NodeView:
    """Node ``code``: its children with training data; it learns the labels below each child (a
    child such as "immature myeloid" spans blasts to metamyelocytes: one target for such
    different cells is hard to learn, the cell types themselves are not)."""
    targets = node_targets(tree, code, dataset.labels)
    in_train = {i: targets[i] for i in train if i in targets}
    classes = [child.code for child in tree.children(code) if child.code in set(in_train.values())]
    outputs = {label: child for child in classes
               for label in sorted({dataset.labels[i] for i, c in in_train.items() if c == child})}
    return NodeView(code, targets, classes, outputs)


def labels_view(tree: Tree, dataset: CellDataset, train: np.ndarray) -> NodeView:
    """Every cell type against every other (what the shared trunk learns, balanced per type).

    A coarse label with finer ones below it in the data (PBC's few unlabelled "ig" cells among
    blasts, promyelocytes and myelocytes) is left out: it is not a type apart from those.
    """
    present = {dataset.labels[i] for i in train}
    classes = sorted(label for label in present
                     if not any(other != label and tree.is_ancestor(tree[label], tree[other]) for other in present))
    return NodeView(TRUNK, dict(enumerate(dataset.labels)), classes, {label: label for label in classes})


def train_node(dataset: CellDataset, splits: dict, tree: Tree, code: str, per_child: int,
               config: TrainConfig, device, dist: _Dist, log: Callable[[str], None],
               step: Callable[[dict], None] | None = None) -> tuple[dict, dict]:
    """Train the classifier of node ``code``; returns its metrics and best state dict."""
    return fit_network(node_view(tree, code, dataset, splits["train"]), dataset, splits, per_child, config,
                       device, dist, log, step)


def fit_network(view: NodeView, dataset: CellDataset, splits: dict, per_child: int, config: TrainConfig,
                device, dist: _Dist, log: Callable[[str], None],
                step: Callable[[dict], None] | None = None) -> tuple[dict, dict]:
    """Train a fresh ``config.architecture`` on ``view``; returns its metrics and best state dict.

    ``step(record)`` follows each epoch (on the main process) with a copy of its record: epoch,
    train_loss, train_accuracy, val_loss, val_accuracy, seconds.
    """
    import torch
    from torch import nn

    from .backbones import create_model, node_network, normalisation

    classes, outputs, code = view.classes, view.outputs, view.name
    class_index = {c: n for n, c in enumerate(classes)}
    train_targets = {i: view.targets[i] for i in splits["train"] if view.targets.get(i) in class_index}
    output_index = {label: n for n, label in enumerate(outputs)}
    children_of_outputs = torch.as_tensor([class_index[child] for child in outputs.values()], device=device)
    val_idx = np.asarray([i for i in splits["val"] if view.targets.get(i) in class_index], dtype=int)
    val_y = np.asarray([class_index[view.targets[i]] for i in val_idx], dtype=int)

    torch.manual_seed(config.seed)
    pretrained, augment_all = MODES[config.mode]
    backbone = create_model(config.architecture, len(outputs),
                            pretrained=(config.pretrained_checkpoint or True) if pretrained else False,
                            img_size=config.input_size)
    model = node_network(backbone, children_of_outputs.tolist(), len(classes)).to(device)
    model = model.to(memory_format=torch.channels_last)
    mean, std = normalisation(backbone)
    trained = backbone
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(backbone, device_ids=[device.index] if device.type == "cuda" else None)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # cosine schedule per step, after one epoch of linear warm-up: from scratch, the first
    # full-rate steps can throw the weights far off
    steps_per_epoch = max(1, -(-per_child * len(classes) // (dist.world * config.batch_size)))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / steps_per_epoch)
                                                  * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    augment = None  # built on first use: albumentations is slow to import and often not needed

    def batch_tensor(indices, repeats=None):
        nonlocal augment
        images = dataset.images[indices]
        if repeats is not None and (augment_all or repeats.any()):
            augment = augment or augmentation(cross_site=config.cross_site)
            images = np.stack([augment(image=img)["image"] if (augment_all or again) else img
                               for img, again in zip(images, repeats, strict=True)])
        return to_tensor(images, mean, std, config.stain_norm).to(device, non_blocking=True,
                                                                 memory_format=torch.channels_last)

    history, best = [], {"val_loss": float("inf"), "epoch": 0, "state": None}
    log(f"[{code}] {config.architecture} {config.input_size}px {config.mode}: classes {', '.join(classes)} "
        f"(learning {len(outputs)} labels: {', '.join(outputs)}); {per_child} per child per epoch, "
        f"{len(val_idx)} validation cells")
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        rng = np.random.default_rng(config.seed * 1000 + epoch)
        order, repeats = balanced_indices(train_targets, per_child, rng)
        usable = len(order) - len(order) % dist.world
        order, repeats = order[dist.rank:usable:dist.world], repeats[dist.rank:usable:dist.world]
        trained.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for start in range(0, len(order), config.batch_size):
            indices = order[start:start + config.batch_size]
            if len(indices) < 2:  # BatchNorm needs two samples
                continue
            x = batch_tensor(indices, repeats[start:start + config.batch_size])
            y = torch.as_tensor([output_index[dataset.labels[i]] for i in indices], device=device)
            with torch.autocast(device.type, enabled=amp):
                logits = trained(x)
                loss = loss_fn(logits, y)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            seen += len(indices)
            loss_sum += loss.item() * len(indices)
            correct += int((model.group(logits.detach().float()).argmax(1) == children_of_outputs[y]).sum())
        val_loss, val_acc = _validate(model, batch_tensor, val_idx, val_y, loss_fn, config.batch_size, device)
        if dist.world > 1:  # ranks' BatchNorm statistics differ slightly: rank 0 decides for all
            import torch.distributed as torch_dist

            shared = torch.tensor([val_loss, val_acc], device=device)
            torch_dist.broadcast(shared, src=0)
            val_loss, val_acc = (float(v) for v in shared)
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - started}
        history.append(record)
        log(f"[{code}] epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.3f} "
            f"acc {record['train_accuracy']:.3f} | val loss {val_loss:.3f} acc {val_acc:.3f} "
            f"({record['seconds']:.0f} s)")
        if step and dist.main:
            step(dict(record))
        if val_loss < best["val_loss"] - 1e-4:
            best = {"val_loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}}
        elif epoch - best["epoch"] >= config.patience:
            log(f"[{code}] early stop: no better validation loss for {config.patience} epochs")
            break
    if best["state"] is None:  # no validation cells: keep the last weights
        best["state"] = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    best_record = history[best["epoch"] - 1] if best["epoch"] else history[-1]
    metrics = {"classes": classes, "outputs": outputs, "mean": list(mean), "std": list(std), "best_epoch": best_record["epoch"],
               "val_loss": best_record["val_loss"], "val_accuracy": best_record["val_accuracy"],
               "history": history, "train_counts": {c: sum(1 for t in train_targets.values() if t == c)
                                                    for c in classes},
               "per_child_per_epoch": per_child}
    return metrics, best["state"]


def _validate(model, batch_tensor, val_idx, val_y, loss_fn, batch_size, device) -> tuple[float, float]:
    import torch

    if len(val_idx) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(val_idx), batch_size):
            x = batch_tensor(val_idx[start:start + batch_size])
            y = torch.as_tensor(val_y[start:start + batch_size], device=device)
            logits = model(x).float()
            loss_sum += float(loss_fn(logits, y)) * len(y)
            correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(val_idx), correct / len(val_idx)


# -- files ------------------------------------------------------------------------------------
def save_node(folder: Path, code: str, state: dict, metrics: dict, config: TrainConfig, fingerprint: str,
              trunk: Path | None = None) -> Path:
    """``<code>.safetensors`` (float16: half the size, no accuracy change at inference) + ``<code>.json``.

    With ``trunk`` (the shared trunk's metadata file), ``state`` is a head on that trunk, and the
    node's ``sha256`` covers both files: it names the whole network that answers for the node.
    Returns the metadata file.
    """
    import torch
    from safetensors.torch import save_file

    from .store import sha256_file

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
    _write_json(folder / f"{code}.json", metadata)
    return folder / f"{code}.json"


def network_sha256(trunk_sha256: str, head_sha256: str) -> str:
    """The version of a node that is a head on a shared trunk: changes when either file does."""
    from .store import sha256_hex

    return sha256_hex(f"{trunk_sha256}:{head_sha256}".encode())


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1, default=str) + "\n")


def _calibrate(models_dir: Path, val: CellDataset, target_accuracy: float) -> float:
    """The review threshold of the tree in ``models_dir``, from its answers on validation cells."""
    from .classify import TreeClassifier

    if len(val) == 0:
        return 0.0
    classifier = TreeClassifier.load(models_dir)
    results = classifier.classify_arrays(val.images)
    tree = classifier.tree
    # right: the predicted cell type is the label or lies below it (a coarse 'ig' label)
    return review_threshold([r.confidence for r in results],
                            [tree.is_ancestor(tree[label], tree[r.code]) for r, label in zip(results, val.labels,
                                                                                             strict=True)],
                            target_accuracy)


def review_threshold(confidences: Sequence[float], correct: Sequence[bool], target_accuracy: float) -> float:
    """The lowest confidence such that the cells at or above it are right ``target_accuracy`` of
    the time (1.0 when no such confidence exists: every cell goes to review)."""
    order = np.argsort(-np.asarray(confidences, dtype=float), kind="stable")
    ranked = np.asarray(confidences, dtype=float)[order]
    accuracy_above = np.cumsum(np.asarray(correct, dtype=float)[order]) / np.arange(1, len(order) + 1)
    meets = np.flatnonzero(accuracy_above >= target_accuracy)
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
