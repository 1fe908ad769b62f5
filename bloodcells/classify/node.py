"""The model of one inner node of the tree: its network loaded and verified from its files, and the
probabilities of its children for a batch of cells (on its own network or as a head on the shared trunk)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import to_tensor
from .files import ModelFileError, read_verified

if TYPE_CHECKING:
    import torch


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
        from ..backbones import create_model, node_network
        from ..heads import trunk_with_head
        from ..train import network_sha256

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

        from ..heads import FLIPS

        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = to_tensor(self.prepare(images[start:start + batch_size]), self.mean, self.std,
                                  self.stain_norm).to(memory_format=torch.channels_last)
                yield [self.module(batch.flip(dims) if dims else batch).float()
                       for dims in (FLIPS if flips else ((),))]
