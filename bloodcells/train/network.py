"""Training one network: a node's (or the shared trunk's) view of the data, the epoch loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data import (
    CellDataset,
    balanced_indices,
    node_targets,
    per_source,
    to_tensor,
)
from ..heads import TRUNK
from ..taxonomy import Tree
from .config import MODES, Distributed, TrainConfig
from .views import BatchRequest, CellViews


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
               config: TrainConfig, device, dist: Distributed, log: Callable[[str], None],
               step: Callable[[dict], None] | None = None,
               still_wanted: Callable[[], None] | None = None) -> tuple[dict, dict]:
    """Train the classifier of node ``code``; returns its metrics and best state dict."""
    return fit_network(node_view(tree, code, dataset, splits["train"]), dataset, splits, per_child, config,
                       device, dist, log, step, still_wanted=still_wanted)


TICK_SECONDS = 1.0  # the least time between two calls of ``still_wanted`` within an epoch


def fit_network(view: NodeView, dataset: CellDataset, splits: dict, per_child: int, config: TrainConfig,
                device, dist: Distributed, log: Callable[[str], None],
                step: Callable[[dict], None] | None = None, initial: dict | None = None,
                still_wanted: Callable[[], None] | None = None) -> tuple[dict, dict]:
    """Train a fresh ``config.architecture`` on ``view``; returns its metrics and best state dict.

    ``step(record)`` follows each epoch (on the main process) with a copy of its record: epoch,
    train_loss, train_accuracy, val_loss, val_accuracy, seconds. ``still_wanted()`` is called between batches,
    at most once every TICK_SECONDS, on the main process: a page's Cancel acts there (an epoch of the shipped
    recipe takes minutes on a CPU, and a cancelled run went on that long, beside the next one). ``initial``: weights to start
    from instead of the mode's (a trained trunk being adapted); every tensor but the new
    classifier's must match. With ``config.ema``, the moving average of the weights is what is
    validated, early-stopped and returned.
    """
    import torch
    from timm.optim import param_groups_layer_decay
    from timm.utils import ModelEmaV3
    from torch import nn

    from ..backbones import classifier_prefix, create_model, node_network, normalisation

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
                            pretrained=(config.pretrained_checkpoint or True) if pretrained and initial is None
                            else False, img_size=config.input_size)
    if initial is not None:
        missing, unexpected = backbone.load_state_dict(initial, strict=False)
        if unexpected or any(not key.startswith(classifier_prefix(backbone)) for key in missing):
            raise ValueError(f"the starting weights do not fit {config.architecture} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model = node_network(backbone, children_of_outputs.tolist(), len(classes)).to(device)
    model = model.to(memory_format=torch.channels_last)
    mean, std = normalisation(backbone)
    trained = backbone
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(backbone, device_ids=[device.index] if device.type == "cuda" else None)
    # layer-wise learning rates (timm's groups: stem, each block, head): the layer k steps below the
    # top learns at layer_decay**k of the rate, so a trained trunk's early, generic layers stay
    # near their weights; at 1.0 every parameter learns at the one rate
    groups = param_groups_layer_decay(backbone, weight_decay=config.weight_decay, layer_decay=config.layer_decay,
                                      weight_decay_exclude_1d=False)
    for group in groups:
        group["lr"] = config.learning_rate * group.pop("lr_scale")
    optimiser = torch.optim.AdamW(groups)  # every group carries its own rate and weight decay
    # cosine schedule per step, after one epoch of linear warm-up: from scratch, the first
    # full-rate steps can throw the weights far off
    steps_per_epoch = max(1, -(-per_child * len(classes) // (dist.world * config.batch_size)))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / steps_per_epoch)
                                                  * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    # the average of the last steps' weights: past the noise of single steps, which early stopping
    # at a still-high learning rate would otherwise keep. Warm-up: the first epochs' average
    # follows the weights closely instead of remembering the random start.
    averaged = ModelEmaV3(model, decay=config.ema, use_warmup=True) if config.ema else None
    kept = averaged.module if averaged else model
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    feature_map = _pooled_map(backbone) if config.cell_focus else None
    views = CellViews(dataset.images, seed=config.seed, cross_site=config.cross_site,
                      plain_background=config.plain_background, workers=config.workers,
                      with_masks=bool(config.cell_focus or config.plain_background))

    def to_network(images):
        return to_tensor(images, mean, std, config.stain_norm).to(device, non_blocking=True,
                                                                 memory_format=torch.channels_last)

    history, best = [], {"val_loss": float("inf"), "epoch": 0, "state": None}
    log(f"[{code}] {config.architecture} {config.input_size}px {config.mode}: classes {', '.join(classes)} "
        f"(learning {len(outputs)} labels: {', '.join(outputs)}); {per_child} per child per epoch, "
        f"{len(val_idx)} validation cells")
    try:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            rng = np.random.default_rng(config.seed * 1000 + epoch)
            order, repeats = balanced_indices(per_source(train_targets, dataset.sources) if config.balance_sources
                                              else train_targets, per_child, rng)
            usable = len(order) - len(order) % dist.world
            order, repeats = order[dist.rank:usable:dist.world], repeats[dist.rank:usable:dist.world]
            trained.train()
            seen, loss_sum, correct, off_cell = 0, 0.0, 0, []
            # BatchNorm needs two samples: a last batch of one is left out
            starts = [start for start in range(0, len(order), config.batch_size) if len(order) - start >= 2]
            requests = [BatchRequest((epoch, dist.rank, start), order[start:start + config.batch_size],
                                     repeats[start:start + config.batch_size] | augment_all, masks=feature_map is not None)
                        for start in starts]
            ticked = time.perf_counter()
            for request, (images, cells) in zip(requests, views.map(requests), strict=True):
                if still_wanted and dist.main and time.perf_counter() - ticked >= TICK_SECONDS:
                    still_wanted()
                    ticked = time.perf_counter()
                indices, x = request.indices, to_network(images)
                if feature_map is not None:
                    cells = torch.from_numpy(cells[:, None].astype(np.float32)).to(device)
                y = torch.as_tensor([output_index[dataset.labels[i]] for i in indices], device=device)
                with torch.autocast(device.type, enabled=amp):
                    logits = trained(x)
                    loss = loss_fn(logits, y)
                    if feature_map is not None:
                        share = outside_cell_share(feature_map[0], backbone.get_classifier().weight, y, cells)
                        loss = loss + config.cell_focus * share
                        off_cell.append(float(share.detach()))
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                scheduler.step()
                if averaged:
                    averaged.update(model, step=scheduler.last_epoch)
                seen += len(indices)
                loss_sum += loss.item() * len(indices)
                correct += int((model.group(logits.detach().float()).argmax(1) == children_of_outputs[y]).sum())
            val_loss, val_acc = _validate(kept, lambda indices: to_network(dataset.images[indices]),
                                          val_idx, val_y, loss_fn, config.batch_size, device)
            if dist.world > 1:  # ranks' BatchNorm statistics differ slightly: rank 0 decides for all
                import torch.distributed as torch_dist

                shared = torch.tensor([val_loss, val_acc], device=device)
                torch_dist.broadcast(shared, src=0)
                val_loss, val_acc = (float(v) for v in shared)
            record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                      "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - started}
            if off_cell:  # the mean share of the training batches' class activation off the cell
                record["train_off_cell"] = float(np.mean(off_cell))
            history.append(record)
            log(f"[{code}] epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.3f} "
                f"acc {record['train_accuracy']:.3f}" + (f" off-cell {record['train_off_cell']:.2f}" if off_cell else "")
                + f" | val loss {val_loss:.3f} acc {val_acc:.3f} ({record['seconds']:.0f} s)")
            if step and dist.main:
                step(dict(record))
            if val_loss < best["val_loss"] - 1e-4:
                best = {"val_loss": val_loss, "epoch": epoch,
                        "state": {k: v.detach().cpu().clone() for k, v in kept.backbone.state_dict().items()}}
            elif epoch - best["epoch"] >= config.patience:
                log(f"[{code}] early stop: no better validation loss for {config.patience} epochs")
                break
    finally:
        views.close()
    if best["state"] is None:  # no validation cells: keep the last weights
        best["state"] = {k: v.detach().cpu().clone() for k, v in kept.backbone.state_dict().items()}
    best_record = history[best["epoch"] - 1] if best["epoch"] else history[-1]
    metrics = {"classes": classes, "outputs": outputs, "mean": list(mean), "std": list(std), "best_epoch": best_record["epoch"],
               "val_loss": best_record["val_loss"], "val_accuracy": best_record["val_accuracy"],
               "history": history, "train_counts": {c: sum(1 for t in train_targets.values() if t == c)
                                                    for c in classes},
               "per_child_per_epoch": per_child}
    return metrics, best["state"]


def outside_cell_share(feature_map, weights, targets, cells):
    """The mean share of each image's class activation map that lies outside its cell: the loss that
    ``config.cell_focus`` weighs ("right for the right reasons", Ross et al. 2017).

    ``feature_map`` (N x C x h x w) is what global pooling reads and ``weights`` (labels x C) the linear
    classifier on the pooled map, so the CAM of each image's label ``targets`` is exact (for such a
    network it is also its Grad-CAM at that layer). ``cells``: N x 1 x H x W masks, downsampled to the
    map's grid as the share of each grid cell on the cell. Images with an empty mask do not count.
    """
    import torch
    from torch import nn

    cam = torch.relu(torch.einsum("nchw,nc->nhw", feature_map.float(), weights[targets].float()))
    inside = nn.functional.adaptive_avg_pool2d(cells, cam.shape[-2:])[:, 0]
    outside = (cam * (1 - inside)).sum((1, 2)) / (cam.sum((1, 2)) + 1e-6)
    counted = (cells.flatten(1).amax(1) > 0).float()
    return (outside * counted).sum() / counted.sum().clamp_min(1)


def _pooled_map(backbone) -> list:
    """A list that holds, after each forward pass, the feature map ``backbone``'s global pooling read;
    refused (ValueError) for a network whose classifier does not read that map's pooled channels
    (MobileNetV3 has a convolution after pooling): its CAM would not be the classifier's evidence."""
    maps: list = []
    pool, classifier = getattr(backbone, "global_pool", None), backbone.get_classifier()
    # a vision transformer's global_pool is a string ("token"): it pools no map
    if (not hasattr(pool, "register_forward_pre_hook")
            or getattr(classifier, "in_features", None) != getattr(backbone, "num_features", None)):
        raise ValueError(f"cell focus needs a network whose linear classifier reads its pooled feature map "
                         f"(EfficientNet, ResNet), not {type(backbone).__name__}: train it with --cell-focus 0")
    pool.register_forward_pre_hook(lambda _module, inputs: maps.__setitem__(slice(None), inputs[:1]))
    return maps


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


