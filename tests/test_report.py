"""The figures the app shows: differential, M:E ratio, sunburst, CSV and the class-folder zip."""

import csv
import io
import zipfile

import pytest

from bloodcells import report
from bloodcells.store import DetectionRow, PredictionRow
from bloodcells.synthetic import cell_image, encode


def test_differential_counts_and_percentages_in_tree_order(tree):
    rows = report.differential(["NGS", "LYT", "NGS", "EBO"], tree)
    assert [r.code for r in rows] == ["EBO", "LYT", "NGS"]  # ERY before LYM before MYE in the tree
    assert [r.count for r in rows] == [1, 1, 2]
    assert [r.percent for r in rows] == [25.0, 25.0, 50.0]
    assert rows[2].path == "ALL/MYE/MYM/NEU/NGS" and rows[2].name == "segmented neutrophil"


def test_differential_rejects_codes_outside_the_tree(tree):
    with pytest.raises(ValueError, match="XYZ"):
        report.differential(["NGS", "XYZ"], tree)


def test_myeloid_erythroid_ratio_leaves_out_monocytes(tree):
    codes = ["NGS", "MYB", "BLA", "MON", "MON", "EBO", "PEB", "LYT"]
    assert report.myeloid_erythroid_ratio(codes, tree) == pytest.approx(3 / 2)
    assert report.myeloid_erythroid_ratio(["NGS"], tree) is None



def test_a_marrows_faggot_cells_and_abnormal_eosinophils_are_myeloid_and_faggot_cells_have_a_row(tree):
    """60 faggot cells of 400 went under "Others" and, with 20 abnormal eosinophils (which the eosinophils'
    row counts), out of the M:E ratio: 2.25 where the marrow's granulocytic cells give 3.25."""
    from bloodcells.signout import clinical_rows

    codes = ["FGC"] * 60 + ["BLA"] * 10 + ["ABE"] * 20 + ["EBO"] * 80 + ["NGS"] * 170 + ["LYT"] * 50 + ["HAC"] * 10
    assert report.myeloid_erythroid_ratio(codes, tree) == pytest.approx(260 / 80)
    rows = {row.label: row for row in clinical_rows(codes, tree, specimen="bone marrow")[0]}
    assert (rows["Faggot cells (abnormal promyelocytes)"].count, rows["Faggot cells (abnormal promyelocytes)"].percent,
            rows["Eosinophils"].count, rows["Hairy cells"].count, rows["Others"].count) == (60, 15.0, 20, 10, 0)


def test_sunburst_values_are_subtree_totals(tree):
    data = report.sunburst_data(["NGS", "NGB", "NEU", "EBO"], tree)
    values = dict(zip(data["ids"], data["values"], strict=True))
    parents = dict(zip(data["ids"], data["parents"], strict=True))
    assert values == {"ALL": 4, "ERY": 1, "EBO": 1, "MYE": 3, "MYM": 3, "NEU": 3, "NGB": 1, "NGS": 1}
    assert parents["NGS"] == "NEU" and parents["ALL"] == ""
    for node, value in values.items():  # plotly's branchvalues="total" needs parent >= sum(children)
        assert value >= sum(v for child, v in values.items() if parents[child] == node)


def test_review_choices_put_tree_neighbours_first(tree):
    choices = report.review_choices("NGS", tree)
    assert choices[0] == "NGB"  # the sibling
    assert set(choices[1:4]) == {"BAS", "EOS", "MON"}  # the cousins under myeloid_mature
    assert "NGS" not in choices and len(choices) == len(tree.leaves()) - 1


def _stored_analysis(store, codes):
    analysis_id = store.start_analysis("cells.zip", "classification", {"ALL": "abc"})
    rows = [PredictionRow(f"{code}_{n}.png", code, "x", 0.9, {}, n == 0, encode(cell_image(code, n, 32)))
            for n, code in enumerate(codes)]
    store.finish_analysis(analysis_id, predictions=rows)
    return store.get_analysis(analysis_id)


def test_analysis_records_and_csv_follow_reviews(store, tree):
    analysis = _stored_analysis(store, ["NGS", "LYT", "NGS"])
    store.review(analysis.predictions[0].id, "NGB", "tester")
    analysis = store.get_analysis(analysis.id)
    assert report.analysis_counts(analysis) == {"NGB": 1, "LYT": 1, "NGS": 1}
    records = report.prediction_records(analysis, tree)
    assert [r["final_code"] for r in records] == ["NGB", "LYT", "NGS"]
    parsed = list(csv.DictReader(io.StringIO(report.records_csv(records).decode("utf-8-sig"))))
    assert parsed[0]["reviewed_code"] == "NGB" and parsed[0]["code"] == "NGS"
    assert len(parsed) == 3
    # as the command line's CSV writes it: the page's said "False" where `classify --out` says "false"
    assert {row["needs_review"] for row in parsed} <= {"true", "false"}


def test_the_csv_is_read_when_asked_not_from_the_page_drawn_before_a_colleagues_review(store, tree):
    """History's CSV came from the records drawn with the page: BAS 2 / EOS 3 where the database (and the PDF
    made at the click) had BAS 3 / EOS 2 after a colleague's review; a deleted analysis failed in silence."""
    from bloodcells.signout import ReportError

    analysis = _stored_analysis(store, ["EOS", "LYT"])
    drawn = report.records_csv(report.prediction_records(analysis, tree))  # what the page held
    store.review(analysis.predictions[0].id, "BAS", "colleague")
    rows = list(csv.DictReader(io.StringIO(report.analysis_csv(store, analysis.id, tree).decode("utf-8-sig"))))
    assert [r["final_code"] for r in rows] == ["BAS", "LYT"] and b"BAS" not in drawn
    field = store.start_analysis("field.png", "detection")
    store.finish_analysis(field, detections=[DetectionRow("field.png", "WBC", 0.9, (0, 0, 9, 9), "NGS", "ALL/NGS", 0.8)])
    boxes = list(csv.DictReader(io.StringIO(report.analysis_csv(store, field).decode("utf-8-sig"))))
    assert [(b["file"], b["class"], b["code"]) for b in boxes] == [("field.png", "WBC", "NGS")]
    store.delete_analysis(analysis.id)
    with pytest.raises(ReportError, match=f"analysis #{analysis.id} does not exist"):
        report.analysis_csv(store, analysis.id)


def test_labelled_zip_reads_back_with_the_reviewed_labels(store, tree):
    from bloodcells.inputs import InputImage, iter_inputs

    analysis = _stored_analysis(store, ["NGS", "LYT"])
    store.review(analysis.predictions[0].id, "NEU", "tester")  # only sure it is a neutrophil
    analysis = store.get_analysis(analysis.id)
    content = report.labelled_zip(report.reviewed_cells(store, analysis))
    members = [item for item in iter_inputs(content, "labels.zip") if isinstance(item, InputImage)]
    labels = sorted(tree.label_for_file(item.name).code for item in members)
    assert labels == ["LYT", "NEU"]
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert all(name.count("/") == 1 for name in archive.namelist())


def test_analysis_overview_counts_cells_flags_reviews_and_boxes(store):
    cells = _stored_analysis(store, ["NGS", "LYT", "NGS"])  # the first cell needs review
    store.review(cells.predictions[1].id, "LYT", "tester")
    field = store.start_analysis("field.jpg", "detection")
    store.finish_analysis(field, detections=[DetectionRow("field.jpg", "RBC", 0.8, (0, 0, 9, 9))] * 2)
    rows = {row["id"]: row for row in report.analysis_overview(store)}
    assert {key: rows[cells.id][key] for key in ("kind", "count", "needs review", "reviewed", "models")} == {
        "kind": "classification", "count": 3, "needs review": 1, "reviewed": 1, "models": "ALL abc"}
    assert (rows[field]["kind"], rows[field]["count"], rows[field]["reviewed"]) == ("detection", 2, 0)
    assert [row["id"] for row in report.analysis_overview(store, kind="detection")] == [field]
    # whether signed off: History said "done" alone, and which were signed was in the count log only
    assert (rows[cells.id]["sign-off"], rows[field]["sign-off"]) == ("not signed", "not signed")
    store.sign_off(cells.id, "Dr A", specimen="peripheral blood")
    assert report.analysis_overview(store, kind="classification")[0]["sign-off"] == "signed"
    store.reopen(cells.id, "Dr A", reason="a second look")
    assert report.analysis_overview(store, kind="classification")[0]["sign-off"] == "reopened"


def test_detection_records_convert_to_a_table_and_csv_keeps_accented_names(store):
    """The results table (st.dataframe converts through Arrow) and the CSV a lab opens in Excel."""
    import pandas as pd
    import pyarrow as pa

    field = store.start_analysis("frottis.zip", "detection")
    store.finish_analysis(field, detections=[DetectionRow("célula 1.jpg", "WBC", 0.9, (0, 0, 9, 9), "NGS", "ALL/NGS",
                                                          0.8),
                                             DetectionRow("célula 1.jpg", "RBC", 0.7, (9, 9, 19, 19))])
    records = report.detection_records(store.get_analysis(field))
    table = pa.Table.from_pandas(pd.DataFrame(records))  # a red cell has no type: no mixed column
    assert table.column("sub_confidence").to_pylist() == [0.8, None]
    data = report.records_csv(records)
    assert data.startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 only with the mark
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert [(r["file"], r["code"], r["sub_confidence"]) for r in rows] == [("célula 1.jpg", "NGS", "0.8"),
                                                                           ("célula 1.jpg", "", "")]


def test_csv_names_the_final_type_beside_the_models_answer(store, tree):
    """A blast reviewed to "not identifiable" was exported with name=blast, path=ALL/MYE/MYI/BLA and no name
    of its final code."""
    analysis = _stored_analysis(store, ["BLA", "LYT"])
    store.review(analysis.predictions[0].id, "NIF", "tester")
    records = report.prediction_records(store.get_analysis(analysis.id), tree)
    blast, lymphocyte = csv.DictReader(io.StringIO(report.records_csv(records).decode("utf-8-sig")))
    assert (blast["code"], blast["name"], blast["path"]) == ("BLA", "blast", "x")  # the model's, as before
    assert (blast["final_code"], blast["final_name"], blast["final_path"]) == ("NIF", "not identifiable", "ALL/ABN/NIF")
    assert (lymphocyte["final_name"], lymphocyte["final_path"]) == ("lymphocyte", "ALL/LYM/LYT")


def test_the_models_training_times_are_shown_in_the_labs_zone(monkeypatch):
    """Home: the classifier's time was always labelled UTC; the detector's was its file's time (when it
    was checked out), in the lab's zone."""
    from types import SimpleNamespace

    monkeypatch.setenv("BLOODCELLS_TIMEZONE", "Europe/Berlin")
    classifier = SimpleNamespace(manifest={"trained_at": "2026-11-28T09:57:18Z"}, nodes={}, tree=None)
    assert report.classifier_overview(classifier) == []  # no nodes: no rows, and no error
    node = SimpleNamespace(classes=["LYM", "MYE"], architecture="efficientnet_lite0", input_size=144, metrics={},
                           sha256="a" * 64)
    classifier.nodes, classifier.tree = {"ALL": node}, {"ALL": SimpleNamespace(title="all cells")}
    assert report.classifier_overview(classifier)[0]["trained"] == "2026-11-28 10:57 CET"
    detector = SimpleNamespace(path="models/detector/detector.pt", classes={0: "WBC"}, imgsz=480, sha256="b" * 64,
                               yolo=SimpleNamespace(ckpt={"date": "2026-07-01T01:57:48.705083+00:00"}))
    assert report.detector_overview(detector)["trained"] == "2026-07-01 03:57 CEST"
    detector.yolo.ckpt = {}
    assert report.detector_overview(detector)["trained"] == ""
