"""The count log: entries from stored analyses, filters, the table in clinical order and its CSV."""

import csv
import io
from datetime import date, datetime

import pytest
from sqlalchemy import update

from bloodcells.countlog import (
    COUNT_COLUMNS,
    NO_CATEGORY,
    count_log,
    filter_log,
    log_csv,
    log_dates,
    log_is_cut,
    log_rows,
)
from bloodcells.store import Analysis, DetectionRow, PredictionRow


def classified(store, codes, name, day: date) -> int:
    analysis_id = store.start_analysis(name, "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow(f"c{n}.png", code, "ALL", 0.9, {}, False)
                                                    for n, code in enumerate(codes)])
    with store.session() as session:  # as if it had been counted that day
        session.execute(update(Analysis).where(Analysis.id == analysis_id)
                        .values(created_at=datetime.combine(day, datetime.min.time())))
    return analysis_id


@pytest.fixture
def logged(store):
    """Four differentials: signed, amended, never signed, and white cells typed on a smear field."""
    marrow = classified(store, ["BLA", "PMO", "EBO", "EBO", "PLT"], "marrow.zip", date(2026, 11, 2))
    store.sign_off(marrow, "Dr A", category="bone marrow")
    blood = classified(store, ["NGS", "NGS", "LYT", "NIF"], "blood.zip", date(2026, 11, 10))
    store.sign_off(blood, "Dr A", category="peripheral blood")
    store.reopen(blood, "Dr B", "recount")
    store.review(store.get_analysis(blood).predictions[3].id, "MON", "Dr B")
    store.sign_off(blood, "Dr B", category="peripheral blood")
    draft = classified(store, ["LYT"], "draft.zip", date(2026, 11, 20))
    store.review(store.get_analysis(draft).predictions[0].id, "PLM", "Dr C")
    field = store.start_analysis("field.png", "detection")
    store.finish_analysis(field, detections=[DetectionRow("field.png", "WBC", 0.9, (0, 0, 9, 9), "EOS", "ALL"),
                                             DetectionRow("field.png", "RBC", 0.9, (9, 0, 19, 9))])
    store.start_analysis("never finished.zip", "classification")
    return {"marrow": marrow, "blood": blood, "draft": draft, "field": field}


def test_entries_carry_category_status_people_and_clinical_counts(store, logged):
    entries = {e.analysis_id: e for e in count_log(store)}
    assert list(entries) == [logged["field"], logged["draft"], logged["blood"], logged["marrow"]]  # newest first
    marrow, blood, draft = entries[logged["marrow"]], entries[logged["blood"]], entries[logged["draft"]]
    assert (marrow.category, marrow.status, marrow.signers, marrow.counted) == ("bone marrow", "signed", ["Dr A"], 4)
    assert marrow.counts["Blasts"] == 1 and marrow.counts["Erythroblasts"] == 2 and marrow.counts["Platelets"] == 1
    assert (blood.status, blood.reviewers, blood.signers) == ("amended", ["Dr B"], ["Dr A", "Dr B"])
    assert blood.counts["Monocytes"] == 1 and blood.counts["Not identifiable"] == 0 and blood.counted == 4
    assert (draft.category, draft.status, draft.signed_at, draft.reviewers) == (NO_CATEGORY, "not signed", None, ["Dr C"])
    assert entries[logged["field"]].counts["Eosinophils"] == 1 and entries[logged["field"]].kind == "detection"


def test_filters_by_category_dates_and_person(store, logged):
    entries = count_log(store)

    def ids(**filters):
        return {e.analysis_id for e in filter_log(entries, **filters)}

    assert ids(categories=["bone marrow"]) == {logged["marrow"]}
    assert ids(categories=["bone marrow", "peripheral blood"]) == {logged["marrow"], logged["blood"]}
    assert ids(start=date(2026, 11, 2), end=date(2026, 11, 10)) == {logged["marrow"], logged["blood"]}  # inclusive
    assert ids(start=date(2026, 11, 3), end=date(2026, 11, 20)) == {logged["blood"], logged["draft"]}
    assert ids(people=["Dr A"]) == {logged["marrow"], logged["blood"]}  # signed, not reviewed
    assert ids(people=["Dr C"], categories=[NO_CATEGORY]) == {logged["draft"]}
    assert ids(people=["Dr A"], categories=[NO_CATEGORY]) == set()
    assert len(ids()) == 4
    with pytest.raises(ValueError, match="dates run backwards: 2026-11-20 is after 2026-11-01"):
        filter_log(entries, start=date(2026, 11, 20), end=date(2026, 11, 1))


def test_a_lab_with_more_analyses_than_the_log_reads_reaches_the_older_ones_by_date(store, logged):
    """The log reads the newest LOG_LIMIT analyses of the dates chosen; older months stay reachable."""
    assert [e.analysis_id for e in count_log(store, limit=2)] == [logged["field"], logged["draft"]]
    assert log_is_cut(store, limit=2) and not log_is_cut(store, limit=4)  # the unfinished one is not counted
    first_days = {"start": date(2026, 11, 1), "end": date(2026, 11, 10)}
    assert [e.analysis_id for e in count_log(store, limit=2, **first_days)] == [logged["blood"], logged["marrow"]]
    assert not log_is_cut(store, limit=2, **first_days)
    assert count_log(store, start=date(2026, 11, 3), end=date(2026, 11, 9)) == []
    assert log_dates(store)[0] == date(2026, 11, 2)
    with pytest.raises(ValueError, match="dates run backwards"):
        count_log(store, start=date(2026, 11, 20), end=date(2026, 11, 1))


def test_table_and_csv_list_counts_in_clinical_order(store, logged):
    entries = filter_log(count_log(store), categories=["peripheral blood"])
    [row] = log_rows(entries)
    assert list(row)[:11] == ["id", "date", "name", "kind", "category", "specimen", "reviewers", "signed by", "status",
                              "signed", "cells counted"]
    assert list(row)[11:] == COUNT_COLUMNS and COUNT_COLUMNS[:2] == ["Blasts", "Promyelocytes"]
    assert (row["date"], row["signed by"], row["status"], row["Segmented neutrophils"]) == \
        ("2026-11-10 00:00 UTC", "Dr A, Dr B", "amended", 2)
    [read_back] = csv.DictReader(io.StringIO(log_csv(entries).decode("utf-8-sig")))
    assert read_back["name"] == "blood.zip" and read_back["Monocytes"] == "1" and read_back["cells counted"] == "4"
    assert "patient" not in log_csv(entries).decode("utf-8-sig").lower()


def test_times_are_shown_and_dates_filtered_in_the_labs_time_zone(store, monkeypatch):
    """Stored in UTC; a lab in Berlin counts an analysis made at 00:30 on 2 March on 2 March."""
    from bloodcells.signout import signoff_lines
    from bloodcells.store import ReviewError

    analysis_id = store.start_analysis("night shift.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "LYT", "ALL", 0.9, {}, False)])
    with store.session() as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id).values(created_at=datetime(2026, 3, 1, 23, 30)))
    assert log_rows(count_log(store))[0]["date"] == "2026-03-01 23:30 UTC"  # unset: UTC, and says so
    monkeypatch.setenv("BLOODCELLS_TIMEZONE", "Europe/Berlin")
    entries = count_log(store)
    assert log_rows(entries)[0]["date"] == "2026-03-02 00:30 CET"
    assert filter_log(entries, start=date(2026, 3, 2), end=date(2026, 3, 2)) == entries
    assert filter_log(entries, start=date(2026, 3, 1), end=date(2026, 3, 1)) == []
    assert count_log(store, start=date(2026, 3, 2), end=date(2026, 3, 2)) == entries  # read from the database so
    assert count_log(store, start=date(2026, 3, 1), end=date(2026, 3, 1)) == []
    assert log_dates(store) == (date(2026, 3, 2), date(2026, 3, 2))
    store.sign_off(analysis_id, "Dr Night")
    [line] = signoff_lines(store.get_analysis(analysis_id).signoffs)
    assert line.endswith(("CET  signed by Dr Night", "CEST  signed by Dr Night"))
    with pytest.raises(ReviewError, match=r"already signed off by Dr Night on \d{4}-\d\d-\d\d \d\d:\d\d CES?T"):
        store.sign_off(analysis_id, "Dr Night")
    monkeypatch.setenv("BLOODCELLS_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ValueError, match="BLOODCELLS_TIMEZONE=Mars/Olympus: not a time zone"):
        count_log(store)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "europe/berlin"])
def test_a_wrong_time_zone_is_a_message_on_every_page_and_in_the_cli(app_store, monkeypatch, capsys, zone):
    """It was a traceback wherever a time was shown (History, Review, reports)."""
    from test_app_store_pages import app, classified

    from bloodcells.cli import main

    analysis_id = classified(app_store, ["NGS"])
    monkeypatch.setenv("BLOODCELLS_TIMEZONE", zone)
    for page in ("5_History", "4_Review"):
        at = app(page).run()
        assert not at.exception, page
        assert [e.value for e in at.error] == [f"BLOODCELLS_TIMEZONE={zone}: not a time zone (give an IANA name "
                                               "such as Europe/Berlin)"], page
    assert main(["report", str(analysis_id), "--out", str(app_store.url.split("///")[1] + ".pdf")]) == 2
    assert f"BLOODCELLS_TIMEZONE={zone}: not a time zone" in capsys.readouterr().err


@pytest.mark.parametrize(("start", "end"), [(None, date(9999, 12, 31)), (date(1, 1, 1), None)])
def test_dates_at_the_ends_of_the_calendar_are_refused_in_words(store, monkeypatch, start, end):
    """An OverflowError, which the page does not catch: a traceback."""
    monkeypatch.setenv("BLOODCELLS_TIMEZONE", "Europe/Berlin")
    with pytest.raises(ValueError, match="give a date between 0001-01-02 and 9999-12-30"):
        count_log(store, start=start, end=end)


def test_a_blood_films_erythroblasts_are_logged_apart_from_its_white_cells(store):
    """The count log counted a blood film's erythroblasts among its white cells, as its report did."""
    film = classified(store, ["NGS", "NGS", "LYT", "EBO"], "film.zip", date(2026, 11, 12))
    marrow = classified(store, ["NGS", "NGS", "LYT", "EBO"], "marrow.zip", date(2026, 11, 12))
    store.sign_off(film, "Dr A", specimen="peripheral blood")
    store.sign_off(marrow, "Dr A", specimen="bone marrow")
    entries = {e.analysis_id: e for e in count_log(store)}
    assert (entries[film].specimen, entries[film].counted, entries[film].counts["Erythroblasts"]) == \
        ("peripheral blood", 3, 1)
    assert (entries[marrow].specimen, entries[marrow].counted, entries[marrow].counts["Erythroblasts"]) == \
        ("bone marrow", 4, 1)
    store.reopen(film, "Dr B", "wrong specimen")  # reopened: the specimen of the last sign-off stands
    assert {e.analysis_id: e.specimen for e in count_log(store)}[film] == "peripheral blood"


def test_a_detections_white_cells_kept_as_cells_are_counted_once_with_their_reviews(store):
    """A detection's typed white cells are its cells (reviewed on Review) besides its boxes: counted from
    both, each would count twice; a reviewer's type is the one logged."""
    field = store.start_analysis("field.png", "detection")
    store.finish_analysis(field, detections=[DetectionRow("field.png", "WBC", 0.9, (0, 0, 9, 9), "EOS", "ALL"),
                                             DetectionRow("field.png", "WBC", 0.9, (20, 0, 29, 9), "LYT", "ALL")],
                          predictions=[PredictionRow("field.png · white cell at (0, 0)", "EOS", "ALL", 0.4, {}, True),
                                       PredictionRow("field.png · white cell at (20, 0)", "LYT", "ALL", 0.9, {}, False)])
    eosinophil = store.get_analysis(field).predictions[0]
    store.review(eosinophil.id, "BAS", "dr.a")
    [entry] = count_log(store)
    assert entry.counted == 2 and (entry.counts["Basophils"], entry.counts["Eosinophils"],
                                   entry.counts["Lymphocytes"]) == (1, 0, 1)
    assert store.final_code_counts([field])[field] == {"BAS": 1, "LYT": 1}
