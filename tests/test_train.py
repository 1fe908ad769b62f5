"""Training the tree: files and metadata, registration, early stopping, pretrained weights offline."""

from __future__ import annotations

import json
import time

import pytest
from conftest import TINY_TREE_CELLS, tiny_train_config

from bloodcells.backbones import PretrainedWeightsError, create_model
from bloodcells.store import Model
from bloodcells.synthetic import write_cell_folders


def test_models_and_metadata_on_disk(trained_models_dir):
    manifest = json.loads((trained_models_dir / "classifier.json").read_text())
    assert manifest["nodes"] == ["ALL", "MYM", "NEU"]
    assert manifest["passthrough"] == {"LYM": "LYT", "MYE": "MYM"}
    assert 0.0 < manifest["review_threshold"] <= 1.0
    assert "ALL/MYE/MYM/NEU  -> 48 per child" in manifest["count_table"]
    split = json.loads((trained_models_dir / "split.json").read_text())
    assert len(split["test"]) + len(split["seen"]) == sum(TINY_TREE_CELLS.values())
    for code in manifest["nodes"]:
        meta = json.loads((trained_models_dir / f"{code}.json").read_text())
        assert meta["architecture"] == "test_efficientnet" and meta["input_size"] == 32
        assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
        assert meta["data_fingerprint"] == manifest["data_fingerprint"]
        history = meta["metrics"]["history"]
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
        assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(history[0])
        best = min(history, key=lambda h: h["val_loss"])
        assert meta["metrics"]["best_epoch"] == best["epoch"]
    assert json.loads((trained_models_dir / "NEU.json").read_text())["classes"] == ["NGB", "NGS"]
    # a node learns the cell types below its children: ALL tells LYM from MYE by learning LYT, EOS, NGB, NGS
    root = json.loads((trained_models_dir / "ALL.json").read_text())
    assert root["classes"] == ["LYM", "MYE"]
    assert root["outputs"] == {"LYT": "LYM", "EOS": "MYE", "NGB": "MYE", "NGS": "MYE"}


def test_node_network_sums_the_fine_labels_of_each_child():
    import torch

    from bloodcells.backbones import node_network

    backbone = create_model("test_efficientnet", 4).eval()
    network = node_network(backbone, [0, 1, 1, 1], 2).eval()  # fine labels 1-3 lie under child 1
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        fine = torch.softmax(backbone(images), dim=1)
        children = torch.softmax(network(images), dim=1)
    assert torch.allclose(children[:, 0], fine[:, 0], atol=1e-5)
    assert torch.allclose(children[:, 1], fine[:, 1:].sum(1), atol=1e-5)
    features = network.forward_head(network.forward_features(images), pre_logits=True)
    assert features.shape == (5, backbone.num_features)


def test_training_registers_models_and_reports_progress(store, tmp_path):
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12, "MON": 12}, size=24)
    steps, lines = [], []
    report = train_tree([tmp_path / "cells"], tmp_path / "models", store=store, log=lines.append,
                        config=tiny_train_config(epochs=2, per_class=8, input_size=24),
                        progress=lambda done, total, text: steps.append((done, total, text)))
    assert set(report.nodes) == {"ALL", "MYM"}
    assert steps[-1][:2] == (4, 4) and "MYM" in steps[-1][2]
    assert any("EOS" in line and "eosinophil" in line for line in lines)  # the count table
    registered = {m.node_code: m for m in store.list_models(kind="classifier")}
    assert set(registered) == {"ALL", "MYM"}
    meta = json.loads((tmp_path / "models" / "MYM.json").read_text())
    assert registered["MYM"].sha256 == meta["sha256"] and registered["MYM"].tree == "default"
    assert store.count_rows(Model) == 2


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "cells", {"LYT": 12, "EOS": 12}, size=24)
    report = train_tree([tmp_path / "cells"], tmp_path / "models", log=lambda _text: None,
                        config=tiny_train_config(epochs=8, patience=1, per_class=8, input_size=24,
                                                 learning_rate=0.1))
    history = report.nodes["ALL"]["history"]
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert len(history) == best + 2 or len(history) == 8  # stopped one epoch after the best, or ran out
    assert report.nodes["ALL"]["best_epoch"] == best + 1


def test_pretrained_without_downloads_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.delenv("BLOODCELLS_ALLOW_DOWNLOADS", raising=False)
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="downloads are off") as error:
        create_model("resnext50_32x4d", 3, pretrained=True)
    assert time.perf_counter() - started < 1.0
    assert "--pretrained" in str(error.value) and "BLOODCELLS_ALLOW_DOWNLOADS=1" in str(error.value)
    with pytest.raises(PretrainedWeightsError, match="nope.pth"):
        create_model("test_efficientnet", 3, pretrained=tmp_path / "nope.pth")


def test_pretrained_from_a_local_checkpoint_replaces_the_head(tmp_path):
    import torch

    source = create_model("test_efficientnet", 10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model("test_efficientnet", 3, pretrained=tmp_path / "weights.pth")
    assert model.get_classifier().out_features == 3
    stem = next(name for name, _ in source.named_parameters() if "conv_stem" in name)
    assert torch.equal(dict(model.named_parameters())[stem], dict(source.named_parameters())[stem])


def test_backbones_by_name_and_fixed_input_sizes():
    import torch

    with pytest.raises(ValueError, match="unknown backbone 'mobilenetv9'"):
        create_model("mobilenetv9", 2)
    vit = create_model("test_vit", 2, img_size=32)  # a fixed-size attention model gets img_size
    assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    cnn = create_model("test_efficientnet", 4, img_size=32)  # ignored where the model takes any size
    assert cnn(torch.zeros(1, 3, 40, 40)).shape == (1, 4)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        tiny_train_config(mode="fine-tuned")


def test_cli_train_classify_round_trip(tmp_path, monkeypatch):
    from bloodcells.cli import main
    from bloodcells.synthetic import write_cell_zip

    write_cell_folders(tmp_path / "cells", {"LYT": 10, "MON": 10}, size=24)
    assert main(["train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "models"),
                 "--backbone", "test_efficientnet", "--size", "24", "--epochs", "1", "--per-class", "8",
                 "--mode", "scratch", "--batch-size", "8"]) == 0
    upload = write_cell_zip(tmp_path / "in.zip", {"LYT": 2, "MON": 2}, size=24)
    assert main(["classify", str(upload), "--models", str(tmp_path / "models"),
                 "--out", str(tmp_path / "out.csv")]) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 5
    assert main(["train", "--data", str(tmp_path / "cells"), "--mode", "pretrained",
                 "--backbone", "test_efficientnet", "--out", str(tmp_path / "m2")]) == 2
