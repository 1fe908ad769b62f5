"""Every CSV a lab opens in a spreadsheet: a text that Excel or LibreOffice would run as a formula
(a file name in an uploaded zip, an analysis or reviewer name) arrives as plain text."""

import csv
import io
import zipfile

from bloodcells.classify import TreeClassifier, classify
from bloodcells.detection.boxes import DetectedBox
from bloodcells.detection.pipeline import DetectionResult
from bloodcells.report import records_csv
from bloodcells.synthetic import cell_image

FORMULAS = ['=HYPERLINK("http://example.org/x","open").png', "+1+2.png", "@SUM(A1).png", "-2+3.png", "\tcell.png",
            "\rcell.png"]


def _read(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_records_csv_writes_formulas_as_text_and_leaves_numbers_and_plain_names():
    records = [{"file": name, "reviewer": "=cmd|' /C calc'!A0", "confidence": 0.5} for name in FORMULAS]
    records.append({"file": "cell 1.png", "reviewer": "dr. a", "confidence": -0.5})
    records.append({"file": "-0.5", "reviewer": "+3", "confidence": "1e-3"})  # numbers in text: still numbers
    # what Python reads as a number but a spreadsheet does not: text, made safe
    records.extend({"file": name, "reviewer": "", "confidence": ""} for name in ("-inf", "+nan", "-1_0"))
    rows = _read(records_csv(records).decode("utf-8-sig"))
    assert [r["file"] for r in rows] == ["'" + name for name in FORMULAS] + ["cell 1.png", "-0.5", "'-inf", "'+nan",
                                                                             "'-1_0"]
    assert [r["reviewer"] for r in rows][:len(FORMULAS) + 2] == ["'=cmd|' /C calc'!A0"] * len(FORMULAS) + ["dr. a", "+3"]
    assert [r["confidence"] for r in rows][:len(FORMULAS) + 2] == ["0.5"] * len(FORMULAS) + ["-0.5", "1e-3"]


def test_a_formula_after_a_semicolon_is_quoted_for_excel_where_semicolons_part_cells():
    """A file name "x;=cmd|' /C calc'!A0" was written unquoted: Excel in a locale that parts cells at ";"
    (German, French) read "=cmd..." as a cell of its own, a formula."""
    text = records_csv([{"file": "x;=cmd|' /C calc'!A0", "count": 3}]).decode("utf-8-sig")
    assert text.splitlines()[1] == '"x;=cmd|\' /C calc\'!A0","3"'


def test_classify_csv_writes_a_zip_members_formula_name_as_text(trained_models_dir, tmp_path):
    upload = tmp_path / "cells.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for name in ['=HYPERLINK("http://example.org/x","open").png', "@SUM(A1).png", "plain.png"]:
            buffer = io.BytesIO()
            cell_image("LYT", 1, 32).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
    outcome = classify(upload, classifier=TreeClassifier.load(trained_models_dir))
    written = outcome.write_csv(tmp_path / "results.csv").read_bytes()
    assert written.startswith(b"\xef\xbb\xbf")  # as the app's downloads: Excel reads UTF-8 only with the mark
    rows = _read(written.decode("utf-8-sig"))
    assert sorted(r["file"] for r in rows) == ["'=HYPERLINK(\"http://example.org/x\",\"open\").png", "'@SUM(A1).png",
                                               "plain.png"]


def test_detection_csv_writes_a_formula_file_name_as_text(tmp_path):
    result = DetectionResult(boxes=[DetectedBox("=1+1.jpg", "WBC", 0.9, 1, 2, 30, 40, "LYT", "ALL/LYM/LYT", 0.8),
                                    DetectedBox("field.jpg", "RBC", 0.7, 0, 0, 9, 9)])
    rows = _read(result.write_csv(tmp_path / "boxes.csv").read_text(encoding="utf-8-sig"))
    assert [(r["file"], r["class"], r["x2"], r["code"]) for r in rows] == [("'=1+1.jpg", "WBC", "30.0", "LYT"),
                                                                         ("field.jpg", "RBC", "9.0", "")]


def test_tables_on_the_pages_offer_no_export_that_would_run_a_formula(monkeypatch):
    """Every table on the pages had Streamlit's own "Download as CSV", which writes a zip member named
    =HYPERLINK(...) as typed: beside the pages' guarded CSV buttons, a second way for it to reach Excel."""
    from pathlib import Path

    from streamlit import config

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # where `make run` starts streamlit
    config.get_config_options(force_reparse=True)
    try:
        assert config.get_option("client.disableDataExport") is True
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)
