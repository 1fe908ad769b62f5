"""``train_tree``: the whole tree, from labelled sources to a models folder."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ..data import (
    CellDataset,
    balance_target,
    count_table,
    format_count_table,
    load_dataset,
    split_indices,
)
from ..heads import TRUNK
from ..inputs import InputError
from ..settings import recorded_path
from ..taxonomy import TREES_DIR, Tree, load_tree
from .config import (
    FORMAT_VERSION,
    MODES,
    EpochCallback,
    Progress,
    TrainConfig,
    TrainReport,
    init_distributed,
    pick_device,
)
from .files import calibrate, register_models, save_node, write_json
from .network import train_node


def train_tree(sources: Sequence[str | Path], out_dir: str | Path, *,
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
    out_dir = Path(out_dir)
    device = pick_device()
    dist = init_distributed(device)
    say = log if dist.main else (lambda _text: None)
    if device.type == "cpu" and dist.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world))
    if dist.world > 1:
        say(f"DistributedDataParallel over {dist.world} processes ({'nccl' if device.type == 'cuda' else 'gloo'})")
    started = time.perf_counter()
    pretrained, _ = MODES[config.mode]
    if pretrained:  # fail before the slow part when the weights cannot be had
        from ..backbones import create_model

        create_model(config.architecture, 2, pretrained=config.pretrained_checkpoint or True,
                     img_size=config.input_size)

    say(f"reading {', '.join(map(str, sources))} (decoded once at {config.input_size} px)")
    dataset = load_dataset(sources, tree, config.input_size)
    for problem in dataset.problems:
        say(f"skipped: {problem}")
    splits = split_indices(dataset.labels, dataset.groups, seed=config.seed)
    say(f"{len(dataset)} images: {len(splits['train'])} train, {len(splits['val'])} val, "
        f"{len(splits['test'])} test" + (" (grouped by patient/slide)" if all(dataset.groups) else ""))
    report = fit_tree(dataset, splits, out_dir, tree=tree, tree_file=tree_file, config=config,
                      manifest={"sources": [recorded_path(s) for s in sources]}, device=device, dist=dist, progress=progress,
                      log=say, on_epoch=on_epoch)
    if dist.main and store is not None:
        register_models(store, out_dir, tree)
    if dist.world > 1:  # leave together: a rank that exits while gloo still runs can abort ("terminate called")
        import torch.distributed as torch_dist

        torch_dist.barrier()
        torch_dist.destroy_process_group()
    report.seconds = time.perf_counter() - started
    say(f"models written to {out_dir} in {report.seconds:.0f} s; {report.review_summary(config)}")
    return report


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` resolved, if a trained tree may be written there (it is replaced whole): refused
    (InputError) when it is a promoted version or holds files that are not a trained tree. Callers with
    work before training check it first: adapting refused a bad folder only after a minute of reading."""
    from ..versions import versions_dir

    out_dir = Path(out_dir).resolve()
    promoted = versions_dir().resolve()
    if out_dir == promoted or promoted in out_dir.parents:
        # a promoted version is never changed: analyses name it, and rollback returns to it as it was
        raise InputError(f"{out_dir}: a promoted version of the tree, which is never changed; write the tree to a "
                         "new folder and promote it (`bloodcells versions promote DIR`)")
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir())
                             and not (out_dir / "classifier.json").is_file()):
        # it is replaced whole: a folder of other files (the training images themselves) would be deleted
        raise InputError(f"{out_dir}: holds files that are not a trained tree; write the tree to a new or empty "
                         "folder, or to a tree folder it replaces")
    return out_dir


def fit_tree(dataset: CellDataset, splits: dict, out_dir: Path, *, tree: Tree, tree_file: Path | None,
             config: TrainConfig, manifest: dict, device, dist, progress: Progress | None = None,
             log: Callable[[str], None] = print, on_epoch: EpochCallback | None = None,
             initial_trunk: dict | None = None, seen_before: Sequence[str] = (),
             calibration: CellDataset | None = None) -> TrainReport:
    """Train the nodes of ``tree`` that have data in ``dataset`` (``splits``: train/val/test
    indices) and write the folder ``out_dir`` whole (built aside, then renamed into place).

    ``manifest``: entries for ``classifier.json`` beyond the training's own (sources, lineage).
    ``initial_trunk``: the shared trunk starts from these weights, which saw the cells
    ``seen_before`` (digests' first 16 hex digits, kept in split.json). The nodes' temperatures
    and the review threshold are calibrated on ``calibration`` (default: the validation cells).
    """
    out_dir = check_out_dir(out_dir)
    train_labels = [dataset.labels[i] for i in splits["train"]]
    table = count_table(tree, train_labels)
    targets_per_node = {code: balance_target(counts, config.min_per_class, config.per_class)
                        for code, counts in table.items() if len(counts) > 1}
    report = TrainReport(out_dir=out_dir, problems=dataset.problems)
    report.count_table = format_count_table(tree, table, targets_per_node)
    log("training images per node and child (train split):\n" + report.count_table)
    report.passthrough = {code: next(iter(counts)) for code, counts in table.items() if len(counts) == 1}
    to_train = [code for code in targets_per_node if not config.nodes or code in config.nodes]
    if not to_train:  # a tree of pass-throughs would call every cell one type, sure of it
        asked = f"none of the nodes asked for ({', '.join(config.nodes)})" if config.nodes else "no node"
        held = sorted(set(dataset.labels) - set(train_labels))
        raise InputError(f"nothing to train: {asked} has training images of two cell types below it (types with "
                         f"training images: {', '.join(sorted(set(train_labels))) or 'none'}); give at least two"
                         + (f" ({', '.join(held)}: so few images that all went to the validation and test cells; "
                            "give each type at least 3)" if held else ""))

    staging = out_dir.with_name(out_dir.name + ".training")
    try:  # a run that fails or is cancelled leaves no half-built folder behind
        if dist.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        if config.shared_trunk:
            from ..heads import train_shared

            report.trunk, report.nodes = train_shared(dataset, splits, tree, to_train, targets_per_node, config, device,
                                                      dist, log, progress, on_epoch, staging, dataset.fingerprint(),
                                                      initial_trunk)
        else:
            _train_separately(dataset, splits, tree, to_train, targets_per_node, config, device, dist, log, progress,
                              on_epoch, staging, report)
        if dist.world > 1:
            import torch.distributed as torch_dist

            torch_dist.barrier()
        if not dist.main:
            return report

        manifest = {
            "format": FORMAT_VERSION, "tree": tree.name, "nodes": to_train, "passthrough": report.passthrough,
            "trunk": f"{TRUNK}.json" if config.shared_trunk else None,
            "data_fingerprint": dataset.fingerprint(), **manifest,
            "config": asdict(config), "count_table": report.count_table,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "review_threshold": 0.0, "review_accuracy": config.review_accuracy,
            "review_certainty": config.review_certainty,
        }
        if tree_file is not None:
            shutil.copyfile(tree_file, staging / "tree.yaml")
        write_json(staging / "split.json", {  # so evaluation scores only cells training never saw
            "seed": config.seed, "test": sorted(dataset.digests[i] for i in splits["test"]),
            "seen": sorted({*seen_before, *(dataset.digests[i][:16] for i in (*splits["train"], *splits["val"]))})})
        write_json(staging / "classifier.json", manifest)
        from ..classify import TreeClassifier

        _, report.review_threshold = calibrate(
            TreeClassifier.load(staging), calibration if calibration is not None else dataset.subset(splits["val"]),
            config.review_accuracy, config.review_certainty)
        manifest["review_threshold"] = report.review_threshold
        write_json(staging / "classifier.json", manifest)
    except BaseException:
        if dist.main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return report


def calibrate_tree(models_dir: str | Path, sources: Sequence[str | Path],
                   log: Callable[[str], None] = print) -> tuple[dict[str, float], float]:
    """Refit the nodes' temperatures and the review threshold of the trained tree in ``models_dir``
    on its validation cells, rebuilt from ``sources`` (those it was trained on) and its recorded
    split; for a tree trained before temperatures were fitted. Returns (temperatures, threshold).
    """
    import json

    from ..classify import TreeClassifier
    from ..versions import versions_dir

    models_dir = Path(models_dir)
    if models_dir.resolve().parent == versions_dir().resolve():
        raise ValueError(f"{models_dir}: a promoted version is never changed (calibrate a copy and promote that)")
    classifier = TreeClassifier.load(models_dir)
    recorded = json.loads((models_dir / "split.json").read_text())
    dataset = load_dataset(sources, classifier.tree, classifier.input_size)
    splits = split_indices(dataset.labels, dataset.groups, seed=recorded.get("seed", 0))
    if sorted(dataset.digests[i] for i in splits["test"]) != sorted(recorded["test"]):
        raise ValueError(f"{', '.join(map(str, sources))}: not the cells {models_dir} was trained on "
                         "(their split differs from its split.json); pass the same sources as for training")
    validation = dataset.subset(splits["val"])
    manifest = classifier.manifest
    temperatures, manifest["review_threshold"] = calibrate(classifier, validation, manifest["review_accuracy"],
                                                           manifest["review_certainty"])
    write_json(models_dir / "classifier.json", manifest)
    log(f"{len(validation)} validation cells: temperatures "
        + ", ".join(f"{code} {t:.2f}" for code, t in temperatures.items())
        + f"; review threshold {manifest['review_threshold']:.3f}")
    return temperatures, manifest["review_threshold"]


def _train_separately(dataset, splits, tree, to_train, targets_per_node, config, device, dist, say, progress,
                      on_epoch, staging, report) -> None:
    """A network of its own for each node in ``to_train``."""
    total_steps = len(to_train) * config.epochs
    done_steps, training = 0, None

    def running() -> None:  # between batches: a page's Cancel acts here
        progress(done_steps, total_steps, f"{training}: training")

    for code in to_train:
        def step(record: dict, _code=code):
            nonlocal done_steps
            done_steps += 1
            if progress:
                progress(done_steps, total_steps, f"{_code}: epoch {record['epoch']}/{config.epochs}")
            if on_epoch:
                on_epoch(_code, record)

        training = code
        metrics, state = train_node(dataset, splits, tree, code, targets_per_node[code], config,
                                    device, dist, say, step, still_wanted=running if progress else None)
        done_steps = to_train.index(code) * config.epochs + config.epochs
        if dist.main:
            save_node(staging, code, state, metrics, config, dataset.fingerprint())
        report.nodes[code] = metrics


def _tree_file(tree) -> Path | None:
    if tree is None or isinstance(tree, Tree):
        return None if tree is not None else TREES_DIR / "default.yaml"
    path = Path(tree)
    return path if path.suffix in {".yaml", ".yml"} else TREES_DIR / f"{tree}.yaml"


