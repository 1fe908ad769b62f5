"""Explanations: which pixels made a node of the tree choose a child, by four captum methods.

One registry by method name, like captum's shared ``attribute`` interface::

    from bloodcells.explain import explain
    for level in explain(image, classifier, method="gradcam"):
        level.overlay.save(f"{level.node}.png")   # one map per level of the predicted path

Why it is fast (the source system took 2-3 minutes per image): every map is computed at the
model's input size and only upsampled for display; Integrated Gradients evaluates all its steps in
one batch (``n_steps``, default 32, ``internal_batch_size``); Occlusion uses windows sized to the
input (a quarter of it, half-overlapping: 7x7 positions) and evaluates many perturbations per
forward pass; the explained copy of a model needs no weight gradients; and with a ``store`` every
map is cached keyed by (model sha256, image sha256, method, settings).

Thread safety: captum registers hooks on the module it explains, and the app shares one
``TreeClassifier`` between sessions. Explanations therefore never touch the shared module: each
runs on a private copy (made once per model sha256 while holding the classifier's lock) guarded by
its own lock, so concurrent classification is neither disturbed nor blocked.
"""

from __future__ import annotations

import copy
import io
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .inputs import open_any

if TYPE_CHECKING:  # torch loads only when something is explained, so the registry is cheap to import
    import torch
    from torch import nn

DISPLAY_SIZE = 256  # overlays are drawn at least this large (models often see 64-224 px)


class ExplanationError(ValueError):
    """A request that cannot be explained (unknown method, node, target or setting)."""


@dataclass(frozen=True)
class Method:
    """One attribution method: ``run(module, inputs, target_index, settings)`` -> (H, W) map."""
    name: str
    title: str
    defaults: dict
    signed: bool  # the map holds evidence for (+) and against (-) the target; overlays show the + part
    run: Callable[[nn.Module, torch.Tensor, int, dict], torch.Tensor]

    def settings(self, overrides: dict) -> dict:
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ExplanationError(f"{self.name} has no setting {', '.join(unknown)} "
                                   f"(settings: {', '.join(self.defaults) or 'none'})")
        return {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}


def _gradcam(module, inputs, target, settings):
    from captum.attr import LayerGradCam
    from torch import nn

    layer = module.get_submodule(settings["layer"] or feature_layer(module, inputs))
    cam = LayerGradCam(module, layer).attribute(inputs, target=target, relu_attributions=True)
    return nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


def _integrated_gradients(module, inputs, target, settings):
    from captum.attr import IntegratedGradients

    steps = int(settings["n_steps"])
    if steps < 1:
        raise ExplanationError(f"integrated gradients: {steps} steps; give at least 1")
    # The baseline is zero after normalisation: the training set's mean colour everywhere.
    attribution = IntegratedGradients(module).attribute(
        inputs, baselines=0.0, target=target, n_steps=steps,
        internal_batch_size=int(settings["internal_batch_size"] or steps))
    return attribution[0].sum(0)


def _occlusion(module, inputs, target, settings):
    import torch
    from captum.attr import Occlusion

    size = min(inputs.shape[-2:])
    window = int(settings["window"] or max(2, size // 4))
    stride = int(settings["stride"] or max(1, window // 2))
    if not 0 < window <= size or not 0 < stride <= window:
        raise ExplanationError(f"occlusion window {window} and stride {stride}: the window must fit the model's "
                               f"{size}-pixel input and the stride the window (1 to {size}, 1 to the window)")
    attribution = Occlusion(module).attribute(
        inputs, sliding_window_shapes=(inputs.shape[1], window, window), strides=(inputs.shape[1], stride, stride),
        baselines=0.0, target=target, perturbations_per_eval=int(settings["perturbations_per_eval"]))
    # Pixels no window covers (when the stride does not divide the input) carry no evidence.
    return torch.nan_to_num(attribution[0].mean(0))


def _saliency(module, inputs, target, settings):
    from captum.attr import Saliency

    return Saliency(module).attribute(inputs.clone().requires_grad_(), target=target, abs=True)[0].amax(0)


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("gradcam", "Grad-CAM", {"layer": None}, False, _gradcam),
    Method("integrated-gradients", "Integrated Gradients", {"n_steps": 32, "internal_batch_size": None},
           True, _integrated_gradients),
    Method("occlusion", "Occlusion", {"window": None, "stride": None, "perturbations_per_eval": 64},
           True, _occlusion),
    Method("saliency", "Saliency", {}, False, _saliency),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ExplanationError(f"unknown explanation method {name!r} (methods: {', '.join(METHODS)})") from None


_FEATURE_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {input shape: layer name}


def feature_layer(module: nn.Module, inputs: torch.Tensor) -> str:
    """Name of the submodule whose output is the feature map the network pools: the last one to
    finish with an (N, C, H, W) output larger than 1x1 when ``inputs`` run once (containers finish
    after their children, so this is a whole block, e.g. a BatchNorm with its activation, never a
    1x1 head conv after pooling). Cached per module and input size.

    This is Grad-CAM's own choice, the last convolutional layer, and for a network whose linear
    classifier reads the pooled map (EfficientNet, ResNet) Grad-CAM there is exactly the class
    activation map. EfficientNet's is ``bn2`` (the head conv's activation), not the last stage timm's
    ``feature_info`` lists: that stage's output is a linear projection the classifier never reads,
    and on real cells only 0.33 of its Grad-CAM mass fell on the cell, against 0.53 at ``bn2``
    (docs/explanations.md).
    """
    import torch

    by_shape = _FEATURE_LAYERS.setdefault(module, {})
    if (name := by_shape.get(tuple(inputs.shape[1:]))) is not None:
        return name
    finished: list[tuple[str, object]] = []
    handles = [sub.register_forward_hook(lambda _m, _i, out, name=name: finished.append((name, out)))
               for name, sub in module.named_modules() if name]
    try:
        with torch.no_grad():
            module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    for name, out in reversed(finished):
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) > 1:
            by_shape[tuple(inputs.shape[1:])] = name
            return name
    raise ExplanationError(f"{type(module).__name__} has no convolutional feature map for Grad-CAM")


def attribute(module: nn.Module, inputs: torch.Tensor, target: int, method: str = "gradcam",
              **settings) -> np.ndarray:
    """The (H, W) attribution map of ``module``'s output ``target`` for one preprocessed image (1, C, H, W).

    ``module`` must be in eval mode and not shared with other threads (captum adds hooks to it).
    """
    explainer = get_method(method)
    resolved = explainer.settings(settings)
    return explainer.run(module, inputs, target, resolved).detach().float().cpu().numpy()


# -- explaining a tree classifier -------------------------------------------------------------
@dataclass
class Explanation:
    """One level of the tree: why ``node`` chose ``target``."""
    node: str
    target: str
    method: str
    attribution: np.ndarray  # (H, W) at the node model's input size
    overlay: Image.Image  # heatmap over the cell, with the caption drawn under it
    seconds: float  # time to compute (or fetch from the cache) this map
    caption: str
    probability: float  # the node model's probability of ``target``
    settings: dict = field(default_factory=dict)
    cached: bool = False

    def png(self) -> bytes:
        from .inputs import png_bytes

        return png_bytes(self.overlay)


@dataclass
class _PrivateCopy:
    module: nn.Module
    lock: threading.Lock


_COPIES: dict[str, _PrivateCopy] = {}
_COPIES_LOCK = threading.Lock()


def _private_copy(node_model, shared_lock) -> _PrivateCopy:
    """This process's explaining copy of a node model, made once per weights sha256."""
    with _COPIES_LOCK:
        entry = _COPIES.get(node_model.sha256)
        if entry is None:
            with shared_lock:
                module = copy.deepcopy(node_model.module).eval()
            # Attributions need gradients with respect to the input only; skipping the weights' saves time.
            module.requires_grad_(False)
            entry = _COPIES[node_model.sha256] = _PrivateCopy(module, threading.Lock())
        return entry


def image_sha256(image: Image.Image | bytes | str | Path) -> str:
    """sha256 of the file content (as the store keys images), or of the pixels of an in-memory image."""
    from .store import sha256_file, sha256_hex

    if isinstance(image, bytes):
        return sha256_hex(image)
    if isinstance(image, str | Path):
        return sha256_file(image)
    rgb = image.convert("RGB")
    return sha256_hex(f"{rgb.size}".encode() + rgb.tobytes())


def _levels(classifier, picture: Image.Image, node: str | None, target: str | None) -> list[tuple[str, str | None]]:
    """(node, target) pairs to explain; a None target means the node's own predicted child."""
    tree = classifier.tree
    if node is not None:
        if node not in classifier.nodes:
            raise ExplanationError(f"node {node!r} has no model (nodes with models: {', '.join(classifier.nodes)})")
        if target is None:
            return [(node, None)]
        towards = tree.child_towards(node, tree.resolve(target).code)
        if towards is None:
            raise ExplanationError(f"{target!r} is not below node {node!r} "
                                   f"(its children: {', '.join(classifier.nodes[node].classes)})")
        return [(node, towards.code)]
    if target is not None:
        codes = [n.code for n in tree.path(tree.resolve(target).code)]
    else:
        codes = classifier.classify_images([picture])[0].path.split("/")
    levels = [(parent, child) for parent, child in zip(codes, codes[1:], strict=False) if parent in classifier.nodes]
    if not levels:  # the root, or a type below nodes without models: no choice was made to explain
        first = next(iter(classifier.nodes.values()))
        raise ExplanationError(f"{target!r} is not a choice of any model of the tree: give a cell type below "
                               f"one (e.g. {', '.join(first.classes)})")
    return levels


def explain(image: Image.Image | bytes | str | Path, classifier, *, method: str = "gradcam",
            node: str | None = None, target: str | None = None, store=None, **settings) -> list[Explanation]:
    """Explain ``classifier``'s answer for one cell image, one map per level of the tree.

    By default every node along the predicted path is explained with its predicted child. ``node``
    explains that node only; ``target`` explains the choice of that cell type instead (with ``node``:
    the child of ``node`` towards it; without: every level on the path to it). With ``store``, maps
    are cached in its ``explanations`` table. ``settings`` are the method's (see ``METHODS``).
    """
    explainer = get_method(method)
    resolved = explainer.settings(settings)
    # decoded as classification decodes it (a JPEG at the scale the network needs): the answer explained
    # is the one stored (at full size a stored band neutrophil was explained as a segmented one)
    picture = open_any(image, at_least=classifier.input_size)
    digest = image_sha256(image)
    explanations = []
    for node_code, target_code in _levels(classifier, picture, node, target):
        explanations.append(_explain_level(classifier, classifier.nodes[node_code], picture, digest,
                                           explainer, resolved, target_code, store))
    return explanations


def _explain_level(classifier, node_model, picture, digest, explainer, settings, target_code, store) -> Explanation:
    import torch

    started = time.perf_counter()
    inputs = node_model.preprocess(picture).unsqueeze(0)
    private = _private_copy(node_model, classifier.lock)
    with private.lock:
        with torch.no_grad():
            probabilities = torch.softmax(private.module(inputs) / node_model.temperature, dim=1)[0]
        index = int(probabilities.argmax()) if target_code is None else node_model.classes.index(target_code)
        target_code = node_model.classes[index]
        key = CacheKey(node_model.sha256, digest, explainer.name, settings_key(settings, target_code))
        attribution = cached_attribution(store, key) if store is not None else None
        cached = attribution is not None
        if attribution is None:
            attribution = explainer.run(private.module, inputs, index, settings).detach().float().numpy()
            if store is not None:
                save_attribution(store, key, attribution)
    seconds = time.perf_counter() - started
    name = classifier.tree[target_code].title  # as the pages write it ("myeloid mature", not "myeloid_mature")
    caption = (f"{explainer.title} | node {node_model.code} -> {target_code} {name} "
               f"(p={float(probabilities[index]):.2f}) | {seconds:.2f} s{' (cached)' if cached else ''}")
    seen = _denormalise(inputs[0], node_model.mean, node_model.std)
    return Explanation(node=node_model.code, target=target_code, method=explainer.name, attribution=attribution,
                       overlay=render_overlay(seen, attribution, caption, signed=explainer.signed),
                       seconds=seconds, caption=caption, probability=float(probabilities[index]),
                       settings=dict(settings), cached=cached)


def _denormalise(tensor: torch.Tensor, mean, std) -> Image.Image:
    """The image as the model saw it (after its resize and crop), for an overlay that lines up."""
    import torch

    mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    pixels = ((tensor * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


def render_overlay(image: Image.Image, attribution: np.ndarray, caption: str, *, signed: bool = False,
                   size: int = DISPLAY_SIZE) -> Image.Image:
    """A heatmap of ``attribution`` over ``image`` (upsampled to at least ``size``) with ``caption`` below."""
    from matplotlib import colormaps

    scale = max(1.0, size / max(image.size))
    width, height = round(image.width * scale), round(image.height * scale)
    base = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    evidence = np.clip(attribution, 0, None) if signed else np.abs(attribution)
    top = float(evidence.max())
    heat = evidence / top if top > 0 else np.zeros_like(evidence)
    heat = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize((width, height), Image.Resampling.BILINEAR))
    colours = colormaps["jet"](heat)[..., :3] * 255
    alpha = (0.65 * np.sqrt(np.clip(heat, 0, 1)))[..., None]  # faint where there is little evidence
    blended = Image.fromarray((base * (1 - alpha) + colours * alpha).round().astype(np.uint8), "RGB")
    return _with_caption(blended, caption)


def _with_caption(image: Image.Image, caption: str) -> Image.Image:
    font = ImageFont.load_default(size=max(11, image.width // 28))
    lines = caption.split(" | ")  # one line per part, so long captions stay readable
    line_height = font.getbbox("Ag")[3] + 4
    framed = Image.new("RGB", (image.width, image.height + line_height * len(lines) + 6), "white")
    framed.paste(image, (0, 0))
    draw = ImageDraw.Draw(framed)
    for n, line in enumerate(lines):
        draw.text((4, image.height + 3 + n * line_height), line, fill="black", font=font)
    return framed


# -- cache in the store's explanations table ---------------------------------------------------
@dataclass(frozen=True)
class CacheKey:
    model_sha256: str
    image_sha256: str
    method: str
    settings_key: str


def settings_key(settings: dict, target: str) -> str:
    """What besides the model, image and method determines a map: the target and the method's settings."""
    parts = [f"target={target}"] + [f"{name}={settings[name]}" for name in sorted(settings)]
    return ";".join(parts)[:255]


def cached_attribution(store, key: CacheKey) -> np.ndarray | None:
    """The map stored under ``key``, or None."""
    content = store.get_explanation(**asdict(key))
    return None if content is None else np.load(io.BytesIO(content), allow_pickle=False)


def save_attribution(store, key: CacheKey, attribution: np.ndarray) -> None:
    """Store ``attribution`` under ``key`` (a map another session stored first is kept)."""
    buffer = io.BytesIO()
    np.save(buffer, attribution.astype(np.float32), allow_pickle=False)
    store.put_explanation(buffer.getvalue(), **asdict(key))
