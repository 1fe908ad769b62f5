"""Distributed training: torchrun with 2 CPU processes (gloo) on tiny generated cells."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bloodcells.classify import TreeClassifier
from bloodcells.synthetic import cell_image, write_cell_folders


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_tree(tmp_path):
    write_cell_folders(tmp_path / "cells", {"LYT": 10, "EOS": 10, "MON": 10}, size=24)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "bloodcells", "train", "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "models"),
         "--backbone", "test_efficientnet", "--size", "24", "--epochs", "2", "--per-class", "8",
         "--batch-size", "4", "--mode", "scratch", "--no-shared-trunk", "--stain-norm", "--plain-background", "0",
         "--cell-focus", "0", "--no-register"],
        capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert "DistributedDataParallel over 2 processes (gloo)" in output
    assert output.count("[ALL] epoch 2/2") == 1  # only rank 0 reports
    classifier = TreeClassifier.load(tmp_path / "models")
    assert set(classifier.nodes) == {"ALL", "MYM"}
    history = classifier.nodes["MYM"].metrics["history"]
    assert len(history) == 2 and history[0]["train_loss"] > 0
    (result,) = classifier.classify_images([cell_image("EOS", 99, 24)])
    assert result.path.startswith("ALL/")


def test_pick_device_takes_the_local_rank_gpu_when_cuda_is_there(monkeypatch):
    """Regression: a renaming slip (``torch.cuda.setpick_device``) made every GPU training crash."""
    import torch

    from bloodcells.train.config import pick_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device() == torch.device("cuda", 1)
    assert chosen == [1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
