"""The storage suite: runs on SQLite, and on MySQL/MariaDB when BLOODCELLS_TEST_MYSQL_URL is set."""

import pytest
from sqlalchemy import inspect, select

from bloodcells.store import (
    Analysis,
    BlobChunk,
    CellType,
    Detection,
    DetectionRow,
    Prediction,
    PredictionRow,
    StoreError,
    sha256_hex,
)
from bloodcells.store.schema import CHUNK_SIZE


def test_schema_created_by_migrations(store):
    tables = set(inspect(store.engine).get_table_names())
    assert {"cell_types", "cells", "blobs", "blob_chunks", "model_types", "models", "model_cell_types",
            "analyses", "predictions", "reviews", "detections", "explanations", "alembic_version"} <= tables
    assert store.current_revision() is not None
    store.upgrade()  # idempotent


def test_cell_types_mirror_the_tree(store, tree):
    with store.session() as session:
        rows = {c.code: c for c in session.scalars(select(CellType))}
        assert set(rows) == set(tree.nodes)
        assert rows["NGB"].parent.code == "NEU"
        assert rows["ALL"].parent is None
    store.sync_cell_types(tree)  # idempotent
    assert store.count_rows(CellType) == len(tree.nodes)


def test_blobs_are_deduplicated_and_chunked(store):
    large = bytes(range(256)) * (CHUNK_SIZE // 256 * 2 + 100)  # > 2 chunks
    with store.session() as session:
        first = store.put_blob(session, large)
        again = store.put_blob(session, large)
        assert first.id == again.id
    assert store.read_blob(sha256=sha256_hex(large)) == large
    assert store.count_rows(BlobChunk) == 3


def test_blob_larger_than_mysql_packet_round_trips(store):
    content = b"\x89PNG" + bytes(20 * 1024 * 1024)  # 20 MB: over MySQL's default 16 MB packet
    with store.session() as session:
        blob_id = store.put_blob(session, content).id
    assert store.read_blob(blob_id=blob_id) == content


def _rows(n):
    return [PredictionRow(filename=f"cell_{i}.png", code="NGS", path="ALL/MYE/MYM/NEU/NGS",
                          confidence=0.9, level_confidences={"ALL": 0.99, "MYE": 0.95},
                          needs_review=i % 2 == 0, content=f"image-{i % 3}".encode()) for i in range(n)]


def test_analysis_is_stored_whole_with_deduplicated_images(store):
    analysis_id = store.start_analysis("upload.zip", "classification", {"ALL": "abc"})
    store.finish_analysis(analysis_id, predictions=_rows(6), summary={"NGS": 6})
    analysis = store.get_analysis(analysis_id)
    assert analysis.status == "done" and analysis.summary == {"NGS": 6}
    assert len(analysis.predictions) == 6
    assert analysis.predictions[0].level_confidences == {"ALL": 0.99, "MYE": 0.95}
    with store.session() as session:
        assert len(session.scalars(select(Prediction.blob_id).distinct()).all()) == 3


def test_a_failed_write_leaves_nothing_half_stored(store):
    analysis_id = store.start_analysis("bad.zip", "classification")
    rows = _rows(4)
    rows[3] = PredictionRow(filename="cell_3.png", code=None, path="p", confidence=1.0,  # NOT NULL violated
                            level_confidences={}, needs_review=False)
    with pytest.raises(StoreError):
        store.finish_analysis(analysis_id, predictions=rows)
    assert store.count_rows(Prediction) == 0  # the first three rows were rolled back with the fourth
    assert store.get_analysis(analysis_id).status == "running"
    store.fail_analysis(analysis_id, "could not store")
    analysis = store.get_analysis(analysis_id)
    assert analysis.status == "failed" and analysis.error == "could not store"
    assert analysis.predictions == []


def test_reviews_keep_old_and_new_label_who_and_when(store):
    analysis_id = store.start_analysis("a.zip", "classification")
    store.finish_analysis(analysis_id, predictions=_rows(2))
    prediction = store.get_analysis(analysis_id).predictions[0]
    store.review(prediction.id, "NGB", "dr.a")
    store.review(prediction.id, "NIF", "dr.b")
    updated = store.get_analysis(analysis_id).predictions[0]
    assert updated.final_code == "NIF"
    assert [(r.old_code, r.new_code, r.reviewer) for r in updated.reviews] == [("NGS", "NGB", "dr.a"),
                                                                              ("NGB", "NIF", "dr.b")]
    assert all(r.created_at is not None for r in updated.reviews)


def test_detections_and_delete(store):
    analysis_id = store.start_analysis("field.jpg", "detection")
    store.finish_analysis(analysis_id, detections=[
        DetectionRow("field.jpg", "WBC", 0.9, (1, 2, 30, 40), code="LYT", path="ALL/LYM/LYT", sub_confidence=0.8),
        DetectionRow("field.jpg", "RBC", 0.8, (50, 50, 70, 70))])
    assert [d.class_code for d in store.get_analysis(analysis_id).detections] == ["WBC", "RBC"]
    store.delete_analysis(analysis_id)
    assert store.count_rows(Detection) == 0 and store.count_rows(Analysis) == 0


def test_models_are_registered_once_and_newest_is_active(store):
    first = store.register_model(kind="classifier", architecture="mobilenetv3_small_100", weights_path="a.pt",
                                 sha256="1" * 64, metrics={"test_accuracy": 0.9}, tree="default",
                                 node_code="ALL", class_codes=["ERY", "LYM"])
    assert store.register_model(kind="classifier", architecture="mobilenetv3_small_100", weights_path="a.pt",
                                sha256="1" * 64, metrics={}, tree="default", node_code="ALL") == first
    store.register_model(kind="classifier", architecture="mobilenetv3_small_100", weights_path="b.pt",
                         sha256="2" * 64, metrics={}, tree="default", node_code="ALL")
    active = store.list_models("classifier")
    assert [m.weights_path for m in active] == ["b.pt"]
    assert active[0].model_type.architecture == "mobilenetv3_small_100"


def test_unreachable_database_gives_a_clear_error():
    from bloodcells.store import Store

    store = Store("mysql+pymysql://root@127.0.0.1:1/nothing")  # a closed port
    with pytest.raises(StoreError, match="cannot be reached"):
        store.ping()
