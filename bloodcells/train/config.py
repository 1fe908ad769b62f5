"""What a training run is asked to do (TrainConfig, modes), what it reports, and where it runs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    plain_background: float = 0.0  # share of augmented images shown with a plain field around the cell
    cell_focus: float = 0.0  # weight of the loss on class evidence outside the cell (train.network.outside_cell_share)
    ema: float = 0.0  # decay of a moving average of the weights, validated and kept instead of them (0: off)
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 2e-3
    layer_decay: float = 1.0  # each layer below the top learns at this factor of the one above (1.0: one rate)
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    patience: int = 4
    min_per_class: int = 1000
    per_class: int | None = None
    seed: int = 0
    review_accuracy: float = 0.97  # needs_review below the confidence that keeps this accuracy
    review_certainty: float = 0.9  # ... shown on the validation cells with this certainty (train.review_threshold)
    nodes: Sequence[str] | None = None  # train only these nodes (default: all that have data)
    shared_trunk: bool = False  # one network for all nodes, a head per node (bloodcells.heads)
    head_views: int = 3  # shared trunk: features of each training cell as it is + augmented views
    balance_sources: bool = False  # balance each child's sources too (adapting: the lab's cells weigh as much)
    # starting from trained weights (adapting): fit the new classifier on the frozen trunk's features
    # before fine-tuning, so its first random steps do not pull the trained features apart (LP-FT)
    linear_probe: bool = False
    workers: int = 0  # processes that augment the next batches while the network trains (0: in turn, in this one)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} (modes: {', '.join(MODES)})")
        if not 0 <= self.plain_background <= 1:
            raise ValueError(f"plain_background is a share of images, between 0 and 1 (not {self.plain_background})")
        if not 0.5 <= self.review_certainty < 1:
            raise ValueError(f"review_certainty is a probability from 0.5 and below 1 (not {self.review_certainty})")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema is a decay per step, 0 (off) or more and below 1 (not {self.ema})")
        if self.workers < 0:
            raise ValueError(f"workers is a number of processes, 0 or more (not {self.workers})")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay is a factor per layer, above 0 and at most 1 (not {self.layer_decay})")
        if self.cell_focus < 0:
            raise ValueError(f"cell_focus is a loss weight, 0 or more (not {self.cell_focus})")


# The recipe of the shipped tree (the Makefile's models-classifier): what `bloodcells train` does
# unless told otherwise, so that a tree trained on one's own cells is made as the shipped one was.
# TrainConfig's own defaults stay small and quick for code and tests that set what they need.
SHIPPED_RECIPE = TrainConfig(
    architecture="efficientnet_lite0", input_size=144, mode="pretrained+aug", shared_trunk=True, per_class=250,
    epochs=45, patience=6, batch_size=32, learning_rate=1e-3, stain_norm=False, plain_background=0.5,
    cell_focus=1.0)


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

    def review_summary(self, config: TrainConfig) -> str:
        """What the review threshold means, for the ``config`` it was trained with."""
        if self.review_threshold >= 1.0:
            return (f"every cell will be flagged for review: at no confidence do the validation cells show "
                    f"{config.review_accuracy:.0%} accuracy with {config.review_certainty:.0%} certainty "
                    f"(too few of them, or too many wrong)")
        return (f"review threshold {self.review_threshold:.3f} (the validation cells above it show "
                f"{config.review_accuracy:.0%} accuracy with {config.review_certainty:.0%} certainty)")


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def pick_device():
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


