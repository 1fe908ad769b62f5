"""Lineage of model trees made from the app (SQLite, and MySQL/MariaDB when BLOODCELLS_TEST_MYSQL_URL is set)."""

import pytest

from bloodcells.store import ReviewError


def candidate(store, **changes) -> int:
    values = dict(tree="default", kind="adapted", folder="/data/training/20261127-101500",
                  base={"trunk": "a" * 64, "ALL": "b" * 64}, cells=120, analyses=[3, 5],
                  figures={"before": {"lab": {"accuracy": 0.41}}, "after": {"lab": {"accuracy": 0.88}}},
                  started_by="dr.a")
    return store.record_model_version(**(values | changes))


def test_a_candidate_is_accepted_or_discarded_once_with_who_and_when(store):
    first, second = candidate(store), candidate(store, cells=80, started_by="dr.b")
    rows = store.list_model_versions("default")
    assert [row.id for row in rows] == [second, first]  # newest first
    row = rows[1]
    assert (row.status, row.version, row.cells, row.analyses, row.base["trunk"], row.started_by) == \
        ("candidate", None, 120, [3, 5], "a" * 64, "dr.a")
    assert row.figures["after"]["lab"]["accuracy"] == 0.88

    accepted = store.decide_model_version(first, "accepted", "dr.c", version="20261127T101600Z-1a2b3c4d")
    assert (accepted.status, accepted.version, accepted.decided_by) == ("accepted", "20261127T101600Z-1a2b3c4d",
                                                                        "dr.c")
    assert accepted.decided_at is not None
    with pytest.raises(ReviewError, match=f"#{first} was already accepted by dr.c"):
        store.decide_model_version(first, "discarded", "dr.d")
    store.decide_model_version(second, "discarded", "dr.d")
    assert {row.id: row.status for row in store.list_model_versions()} == {first: "accepted", second: "discarded"}
    assert store.list_model_versions("another-tree") == []


@pytest.mark.parametrize("call, message", [
    (lambda store, id_: store.decide_model_version(id_, "accepted", "dr.c"), "needs the version id"),
    (lambda store, id_: store.decide_model_version(id_, "maybe", "dr.c"), "accepted or discarded, not 'maybe'"),
    (lambda store, id_: store.decide_model_version(id_, "discarded", "  "), "needs the name"),
    (lambda store, id_: store.decide_model_version(id_ + 99, "discarded", "dr.c"), "no model version"),
    (lambda store, id_: candidate(store, started_by=""), "needs the name"),
])
def test_bad_lineage_requests_are_refused_and_change_nothing(store, call, message):
    id_ = candidate(store)
    with pytest.raises(ReviewError, match=message):
        call(store, id_)
    assert [(row.id, row.status) for row in store.list_model_versions()] == [(id_, "candidate")]
