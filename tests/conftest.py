"""Shared fixtures. Tests make their own data (bloodcells.synthetic) and never need ../shared."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

# Keep every test offline and away from the user's data before anything imports ultralytics.
os.environ.setdefault("BLOODCELLS_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache"))
from bloodcells.settings import apply_offline_environment  # noqa: E402

apply_offline_environment()

MYSQL_URL = os.environ.get("BLOODCELLS_TEST_MYSQL_URL")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Each test gets its own data folder and embedded database."""
    monkeypatch.setenv("BLOODCELLS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BLOODCELLS_DATABASE_URL", raising=False)


@contextmanager
def mysql_database(charset: str = "utf8mb4"):
    """The URL of a fresh, empty database on the test MySQL server; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(MYSQL_URL)
    name = f"bc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database=""), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET {charset}"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request, tmp_path):
    """The URL of an empty database: SQLite always, MySQL/MariaDB when BLOODCELLS_TEST_MYSQL_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not MYSQL_URL:
        pytest.skip("BLOODCELLS_TEST_MYSQL_URL is not set")
    with mysql_database() as url:
        yield url


@pytest.fixture
def store(database_url):
    from bloodcells.store import open_store
    from bloodcells.taxonomy import default_tree

    store = open_store(database_url)
    store.sync_cell_types(default_tree())
    yield store
    store.engine.dispose()


@pytest.fixture
def app_store(tmp_path, monkeypatch):
    """The store the Streamlit app opens in AppTests: the test's own SQLite file."""
    from bloodcells.store import open_store

    url = f"sqlite:///{tmp_path / 'app.db'}"
    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", url)
    store = open_store(url)
    yield store
    store.engine.dispose()


@pytest.fixture
def tree():
    from bloodcells.taxonomy import default_tree

    return default_tree()


# -- classification (owner: classification) ---------------------------------------------------
TINY_TREE_CELLS = {"LYT": 40, "EOS": 40, "NGB": 40, "NGS": 40}


def tiny_train_config(**changes):
    """A tree of tiny models (timm's test_efficientnet, 32 px) that trains in seconds."""
    from bloodcells.train import TrainConfig

    options = dict(architecture="test_efficientnet", input_size=32, mode="scratch", cross_site=False,
                   stain_norm=False, epochs=10, per_class=48, batch_size=16, patience=6, learning_rate=3e-3)
    return TrainConfig(**{**options, **changes})


@pytest.fixture(scope="session")
def trained_models_dir(tmp_path_factory):
    """A tiny trained tree (ALL -> LYM|MYE, MYE -> MYM, MYM -> NEU|EOS, NEU -> NGB|NGS) on generated
    cells: models ALL, MYM and NEU; LYM and MYE have one child with data and always descend."""
    from bloodcells.synthetic import write_cell_folders
    from bloodcells.train import train_tree

    root = tmp_path_factory.mktemp("tiny_tree")
    write_cell_folders(root / "cells", TINY_TREE_CELLS, size=32)
    train_tree([root / "cells"], root / "models", config=tiny_train_config(), log=lambda _text: None)
    return root / "models"


@pytest.fixture(scope="session")
def shared_trunk_models_dir(tmp_path_factory):
    """The tiny tree of ``trained_models_dir`` as one shared trunk with a head per node (ALL, MYM, NEU):
    the design the shipped tree has, and the one adaptation to a new lab needs."""
    from bloodcells.synthetic import write_cell_folders
    from bloodcells.train import train_tree

    root = tmp_path_factory.mktemp("shared_trunk_tree")
    write_cell_folders(root / "cells", TINY_TREE_CELLS, size=32)
    train_tree([root / "cells"], root / "models", log=lambda _text: None,
               config=tiny_train_config(shared_trunk=True, head_views=2))
    return root / "models"


# -- detection (owner: detection) -------------------------------------------------------------
@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory):
    """The weights (``.../models/detector/detector.pt``) of a tiny YOLO trained 1 epoch on generated
    smear fields; ``trained_detector.parents[1]`` works as BLOODCELLS_MODELS_DIR. It finds boxes
    only with a very low confidence threshold: good for plumbing, not for accuracy."""
    from bloodcells.detection import train_detector
    from bloodcells.synthetic import write_yolo_dataset

    root = tmp_path_factory.mktemp("tiny_detector")
    write_yolo_dataset(root / "fields", n_train=4, n_val=2, size=(128, 96))
    trained = train_detector(root / "fields", epochs=1, imgsz=64, batch=4, workers=0, cache=False,
                             out=root / "models" / "detector", work_dir=root / "work", verbose=False)
    return trained.path
