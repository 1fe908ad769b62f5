"""The clinical report: clinical order, denominators, absolute counts, PDF text read back, CLI."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from test_inputs_paths import zip_of

from bloodcells.signout import ReportError, SignedReportError, build_report, clinical_rows, to_html, to_pdf
from bloodcells.store import Analysis, DetectionRow, PredictionRow
from bloodcells.synthetic import cell_image, encode


def pdf_text(content: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def test_rows_follow_the_clinical_order_and_leave_non_white_cells_out_of_the_denominator(tree):
    codes = ["NGS"] * 6 + ["NGB"] * 2 + ["BLA"] + ["LYI"] + ["EBO"] * 2 + ["LYT"] * 3 + ["HAC"] \
        + ["PLT"] * 5 + ["NIF"] * 4 + ["KSC"]
    rows, apart, counted = clinical_rows(codes, tree, white_cell_count=8.0)
    assert [row.label for row in rows][:8] == ["Blasts", "Promyelocytes", "Faggot cells (abnormal promyelocytes)",
                                               "Myelocytes", "Metamyelocytes", "Immature granulocytes, stage unclear",
                                               "Band neutrophils", "Segmented neutrophils"]
    assert [row.label for row in rows][-4:] == ["Plasma cells", "Hairy cells", "Erythroblasts", "Others"]
    by_label = {row.label: row for row in rows}
    assert counted == 16  # 6 + 2 + 2 blasts + 2 + 3 + 1 hairy cell; platelets, NIF, smudge apart
    assert by_label["Blasts"].count == 2 and by_label["Hairy cells"].count == 1 and by_label["Others"].count == 0
    assert by_label["Segmented neutrophils"].percent == 37.5  # 6/16, to a tenth
    assert by_label["Segmented neutrophils"].per_litre == pytest.approx(3.0)  # 8.0 x 6/16
    assert {row.label: row.count for row in apart} == {"Platelets": 5, "Smudge cells": 1, "Not identifiable": 4}
    with pytest.raises(ReportError, match="XYZ"):
        clinical_rows(["XYZ"], tree)


def test_report_of_a_reviewed_classification_reads_back_from_the_pdf(store):
    analysis_id = store.start_analysis("marrow.zip", "classification", {"ALL": "abcdef0123456789"})
    codes = ["NGS", "NGS", "EBO", "BLA", "NIF", "LYT"]
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.4 if n < 3 else 0.99, {}, n < 3, encode(cell_image(code, n, 32)))
        for n, code in enumerate(codes)])
    first = store.get_analysis(analysis_id).predictions[0]
    store.review(first.id, "MYB", "Dr Who")  # NGS -> myelocyte: the report counts the reviewed label
    report = build_report(store, analysis_id, target=100, category="marrow", comment="Hypercellular.")
    assert report.counted == 5 and report.unreviewed_flagged == 2 and len(report.gallery) == 2
    assert report.reviewers == ["Dr Who"] and report.me_ratio == pytest.approx(3.0)  # MYB, NGS, BLA : EBO
    text = pdf_text(to_pdf(report))
    for expected in ("Differential count", f"#{analysis_id} marrow.zip", "Myelocytes", "Segmented neutrophils",
                     "5 of a 100-cell target (not reached: 95 short)", "3.00 : 1", "Dr Who", "ALL abcdef01",
                     "Not identifiable: 1", "Hypercellular.", "marrow", "Flagged cells not yet reviewed"):
        assert expected in text, expected
    assert "patient" not in text.lower()
    page = to_html(report)
    assert "Myelocytes" in page and "data:image/png;base64," in page and "Hypercellular." in page



def test_a_blood_films_report_gives_the_neutrophils_together_and_says_how_its_count_was_used(store):
    """From the audit: 100 white cells and 25 erythroblasts with a count of 20: the report printed absolute
    counts from 20 and nothing of the 16.0 an uncorrected count corrects to; bands and segmented neutrophils
    were apart, with no absolute neutrophil count."""
    analysis_id = store.start_analysis("film.zip", "classification")
    codes = ["NGS"] * 55 + ["NGB"] * 5 + ["LYT"] * 40 + ["EBO"] * 25
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(codes)])
    text = " ".join(pdf_text(to_pdf(build_report(store, analysis_id, specimen="peripheral blood",
                                                 white_cell_count=20.0))).split())
    for expected in ("White-cell count 20 x 10^9/L, used as entered for the absolute counts; with 25.0 erythroblasts "
                     "per 100 white cells a count not corrected for them corrects to 16.00 x 10^9/L (x 100 / 125.0)",
                     "Neutrophils, total 60 (60.0%); 12.00 x 10^9/L (absolute neutrophil count)"):
        assert expected in text, (expected, text)
    marrow = " ".join(pdf_text(to_pdf(build_report(store, analysis_id, specimen="bone marrow"))).split())
    assert "White-cell count -" in marrow and "Neutrophils, total 60 (48.0%) Flagged" in marrow


def test_an_amended_report_gives_the_differential_signed_before_beside_the_new_one(store):
    """A marrow signed with 2 blasts of 100, reopened, 3 segmented neutrophils retyped as blasts, signed again:
    the report listed "c2.png: NGS -> BLA" three times and nowhere the 2.0% first reported."""
    analysis_id = store.start_analysis("marrow.zip", "classification")
    codes = ["BLA"] * 2 + ["NGS"] * 88 + ["EBO"] * 10
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(codes)])
    store.sign_off(analysis_id, "Dr A", specimen="bone marrow")
    assert build_report(store, analysis_id).signed_before is None  # never reopened
    store.reopen(analysis_id, "Dr B", reason="blasts missed")
    for cell in store.get_analysis(analysis_id).predictions[2:5]:
        store.review(cell.id, "BLA", "Dr B")
    reopened = build_report(store, analysis_id)
    assert (reopened.signed_before["Blasts"].count, reopened.signed_before["Blasts"].percent) == (2, 2.0)
    store.sign_off(analysis_id, "Dr B", specimen="peripheral blood", white_cell_count=4.0)
    amended = build_report(store, analysis_id)
    before = amended.signed_before
    assert (before["Blasts"].count, before["Segmented neutrophils"].count, before["Erythroblasts"].count) == (2, 88, 10)
    text = " ".join(pdf_text(to_pdf(amended)).split())
    assert "signed before (bone marrow, 100): count (%)" in text
    assert "Blasts 5 5.6 1.8-12.5 0.22 2 (2.0)" in text, text  # now over the 90 white cells of a blood film
    assert "Total counted 90 100.0 4 100" in text
    assert "Erythroblasts - - - - 10 (10.0) Total counted" in text  # signed in the marrow's, not in the film's
    assert "<td>2 (2.0)</td>" in to_html(amended)


def test_a_report_says_what_a_count_can_tell_and_what_no_person_saw(store):
    """From a haematologist's audit: 5 blasts of 100 printed "5.0%" with no limits (1.6-11.3 by the count);
    195 of 200 cells never seen by a person were signed as "flagged, not reviewed 0"; 30 smudge cells beside 180
    counted were not put against the white cells seen; a PDF made before the sign-off read as the signed one."""
    analysis_id = store.start_analysis("marrow.zip", "classification")
    codes = ["BLA"] * 5 + ["NGS"] * 95 + ["KSC"] * 25 + ["PLT"] * 3
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(codes)])
    store.review(store.get_analysis(analysis_id).predictions[0].id, "BLA", "Dr Who")
    report = build_report(store, analysis_id, specimen="bone marrow")
    blasts = next(row for row in report.rows if row.label == "Blasts")
    assert (blasts.percent, blasts.limits) == (5.0, (1.6, 11.3))
    assert next(row for row in report.rows if row.label == "Monocytes").limits == (0.0, 3.6)  # none seen: at most
    text = " ".join(pdf_text(to_pdf(report)).split())
    for expected in ("Differential count - DRAFT, not signed off", "95% CI of %", "Blasts 5 5.0 1.6-11.3",
                     "Reviewed by a person 1 of the 128 cells of the analysis (100 in the differential); the others "
                     "as the models typed them", "not a reference range",
                     "Platelets: 3; Smudge cells: 25 (20.0% of the 125 nucleated cells seen)",
                     "Analysis #1 · Differential count - DRAFT, not signed off · page 1 of 1"):
        assert expected in text, (expected, text)
    store.sign_off(analysis_id, "Dr Who", specimen="bone marrow")
    signed = " ".join(pdf_text(to_pdf(build_report(store, analysis_id))).split())
    assert "Differential count Analysis" in signed and "DRAFT" not in signed


def test_names_comments_and_units_reach_the_pdf_as_typed(store):
    """The signed report is the lab's record: "≥", "μL", "Łukasz" were written as "?"."""
    analysis_id = store.start_analysis("Probe Müller.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "LYT", "ALL", 0.99, {}, False)])
    store.review(store.get_analysis(analysis_id).predictions[0].id, "LYT", "Łukasz Żółć")
    report = build_report(store, analysis_id, comment="Blasts ≥ 5% – 2.1 × 10⁹/L, μL; 王医生")
    text = pdf_text(to_pdf(report))
    for expected in ("Probe Müller.zip", "Łukasz Żółć", "Blasts ≥ 5% – 2.1 × 10⁹/L, μL"):
        assert expected in text, (expected, text)
    assert "; ???" in text  # a script the font lacks is marked, not dropped


def test_the_report_of_a_signed_analysis_says_what_was_signed(store):
    """A page drawn before someone else signed off still held its draft: the PDF said "signed off by
    Dr B" over Dr A's unsaved comment."""
    analysis_id = store.start_analysis("film.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "NGS", "ALL", 0.9, {}, False)])
    store.sign_off(analysis_id, "Dr B", category="marrow", comment="Signed text.", target=100)
    with pytest.raises(SignedReportError, match="signed off by Dr B on .* the signed category, comment; reopen"):
        build_report(store, analysis_id, category="blood", comment="A's unsaved draft", target=100)
    report = build_report(store, analysis_id, category="marrow", target=100)  # the signed values are fine
    assert (report.category, report.comment, report.target) == ("marrow", "Signed text.", 100)
    store.reopen(analysis_id, "Dr A", "amend")
    assert build_report(store, analysis_id, comment="A's draft").comment == "A's draft"


def test_detection_reports_count_the_typed_white_cells(store):
    analysis_id = store.start_analysis("field.png", "detection", {"detector": "feedbeef"})
    store.finish_analysis(analysis_id, detections=[
        DetectionRow("field.png", "WBC", 0.9, (0, 0, 9, 9), "MON", "ALL/MYE/MYM/MON", 0.8),
        DetectionRow("field.png", "WBC", 0.9, (10, 0, 19, 9), "LYT", "ALL/LYM/LYT", 0.8),
        DetectionRow("field.png", "RBC", 0.9, (20, 0, 29, 9))])
    report = build_report(store, analysis_id)
    assert report.counted == 2 and {r.label: r.percent for r in report.rows}["Monocytes"] == 50
    store.sign_off(analysis_id, "Dr A", specimen="peripheral blood")
    store.reopen(analysis_id, "Dr A", reason="a second look")  # stored before its white cells were cells
    reopened = build_report(store, analysis_id)
    assert {label: row.count for label, row in reopened.signed_before.items() if row.count} == {
        "Monocytes": 1, "Lymphocytes": 1}  # it was 0 in every row beside the real counts
    assert "Reviewed by a person" not in pdf_text(to_pdf(reopened))  # it said "0 of 0 cells"


def test_the_report_says_the_uploads_doubtful_counts_and_files_not_used(store):
    """A greyscale field's warning and two files skipped were said on the Detection page only: History and the
    PDF a colleague signed gave the counts with no caveat."""
    from test_app_detection import DrawnCells

    from bloodcells.detection import detect
    from bloodcells.synthetic import smear_field

    image, truth = smear_field(320, 240, n_wbc=1, n_rbc=6, n_platelets=2, seed=4)
    grey = image.convert("L").convert("RGB")
    upload = {"grey.png": encode(grey), "notimage.jpg": b"text", "tiny.png": encode(image.resize((20, 15)))}
    result = detect(zip_of(upload), detector=DrawnCells({"grey.png": truth}), type_white_cells=False, store=store,
                    name="fields.zip")
    assert result.warnings and len(result.problems) == 2
    report = build_report(store, result.analysis_id)
    assert report.notes == [*result.warnings, "1 white cell found, not typed (white-cell typing switched off): not in "
                                              "the differential",
                            "2 files of the upload not used (unreadable, blank, too small or not an image): History "
                            "lists them"]
    text = " ".join(pdf_text(to_pdf(report)).split())
    assert "Notes on the upload" in text and " ".join(result.warnings[0].split()) in text
    assert "<h2>Notes on the upload</h2><ul><li>" in to_html(report)
    clean = store.start_analysis("cells.zip", "classification")
    store.finish_analysis(clean, predictions=[PredictionRow("c.png", "NGS", "ALL", 0.99, {}, False)])
    assert build_report(store, clean).notes == [] and "Notes on the upload" not in pdf_text(to_pdf(build_report(store,
                                                                                                          clean)))


def test_a_report_of_untyped_white_cells_says_they_were_found(store):
    """``detect --no-typing``: its report said "0 cells counted" and nothing of the 3 white cells found."""
    from test_app_detection import DrawnCells

    from bloodcells.detection import detect
    from bloodcells.synthetic import smear_field

    image, truth = smear_field(320, 240, n_wbc=3, n_rbc=1, n_platelets=1, seed=4)
    result = detect(zip_of({"f.png": encode(image)}), detector=DrawnCells({"f.png": truth}),
                    type_white_cells=False, store=store, name="fields.zip")
    report = build_report(store, result.analysis_id)
    assert report.counted == 0 and report.notes == [
        "3 white cells found, not typed (white-cell typing switched off): not in the differential"]
    assert "1 field: 1 red cell, 1 platelet</td>" in to_html(report)  # "1 platelets"


def test_a_gallery_of_the_first_flagged_cells_says_so_and_names_their_files(store):
    """"Flagged, not reviewed 16" over 12 images and no word of the other 4; each image had a code, no file."""
    from bloodcells.signout.counts import GALLERY_CELLS

    analysis_id = store.start_analysis("cells.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"cell_{n}.png", "MON", "ALL", 0.4, {}, True, encode(cell_image("MON", n, 32)))
        for n in range(GALLERY_CELLS + 4)])
    text = " ".join(pdf_text(to_pdf(build_report(store, analysis_id))).split())
    assert f"Flagged cells not yet reviewed (the first {GALLERY_CELLS} of {GALLERY_CELLS + 4})" in text
    assert "1. cell_0.png; 2. cell_1.png" in text and f"{GALLERY_CELLS}. cell_{GALLERY_CELLS - 1}.png" in text


def test_a_flagged_cell_too_small_to_draw_leaves_the_gallery_not_the_report(store):
    """A white cell's crop of 14 px (a tiny box in a field's corner, stored before crops were at least 16 px)
    made the PDF and the HTML report fail: "cell: 14x14 pixels is too small to show a cell"."""
    analysis_id = store.start_analysis("fields.zip", "detection")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow("tiny.png", "LYT", "ALL", 0.4, {}, True, encode(cell_image("LYT", 0, 64).resize((14, 14)))),
        PredictionRow("whole.png", "MON", "ALL", 0.4, {}, True, encode(cell_image("MON", 1, 32)))])
    report = build_report(store, analysis_id)
    assert report.unreviewed_flagged == 2 and [name for name, _, _ in report.gallery] == ["whole.png"]
    text = " ".join(pdf_text(to_pdf(report)).split())
    assert "(the first 1 of 2)" in text and "1. whole.png" in text and "tiny.png" not in text
    assert "whole.png" in to_html(report)


def test_a_slide_is_reported_and_logged_with_the_cells_its_differential_counted(store):
    """Slide mode counts white cells field by field up to its target: the report and the count log
    count those cells, with the slide's target, not every white cell found on the fields."""
    from bloodcells.countlog import count_log
    from bloodcells.detection import DetectedBox, FieldImage, count_slide
    from bloodcells.synthetic import smear_field

    fields, boxes = [], []
    for n, code in enumerate(("LYT", "NGS", "EOS")):  # unrelated fields, three white cells of one type each
        image, truth = smear_field(320, 240, n_wbc=3, n_rbc=4, n_platelets=0, seed=300 + n)
        fields.append(FieldImage.of(f"{n}.png", image))
        boxes += [DetectedBox(f"{n}.png", "WBC", 0.9, b.x1, b.y1, b.x2, b.y2, code=code) for b in truth
                  if b.cls == "WBC"]
    slide, kept = count_slide(fields, boxes, wbc_target=4)  # field 0's three lymphocytes, one neutrophil
    assert len(kept) == 9 and slide.white_cells.counted == 4
    analysis_id = store.start_analysis("slide.zip", "detection")
    store.finish_analysis(analysis_id, summary={"slide": slide.as_dict()}, detections=[
        DetectionRow(b.file, "WBC", 0.9, (b.x1, b.y1, b.x2, b.y2), b.code, f"ALL/{b.code}", 0.8) for b in kept])

    report = build_report(store, analysis_id)
    assert (report.counted, report.target) == (4, 4)
    assert (report.smear.fields, report.smear.red_cells, report.smear.slide) == (3, slide.counts["RBC"], True)
    assert "(each cell once)" in pdf_text(to_pdf(report))
    percent = {r.label: r.percent for r in report.rows if r.count}
    assert percent == {"Lymphocytes": 75, "Segmented neutrophils": 25}
    [entry] = count_log(store)
    assert entry.counted == 4 and (entry.counts["Lymphocytes"], entry.counts["Eosinophils"]) == (3, 0)


def test_bad_requests_are_named(store):
    with pytest.raises(ReportError, match="#999 does not exist"):
        build_report(store, 999)
    failed = store.start_analysis("x.zip", "classification", {})
    store.fail_analysis(failed, "InputError: nope")
    with pytest.raises(ReportError, match="is failed \\(InputError: nope\\): only a finished analysis"):
        build_report(store, failed)
    running = store.start_analysis("z.zip", "classification", {})
    with pytest.raises(ReportError, match="is running: only a finished analysis has a report"):
        build_report(store, running)
    with store.session() as session:  # its process was killed: the CLI said "is running" for good
        session.get(Analysis, running).heartbeat_at -= timedelta(minutes=10)
    with pytest.raises(ReportError, match="was interrupted \\(the process storing it stopped\\): it has no results"):
        build_report(store, running)
    done = store.start_analysis("y.zip", "classification", {})
    store.finish_analysis(done, predictions=[])
    with pytest.raises(ReportError, match="target 150"):
        build_report(store, done, target=150)
    assert build_report(store, done, target=500).target == 500  # a marrow's (ICSH 2008): it was refused
    with pytest.raises(ReportError, match="10\\^9/L"):
        build_report(store, done, white_cell_count=7500)


def test_cli_writes_pdf_and_html(app_store, tmp_path, capsys):
    from bloodcells.cli import main

    analysis_id = app_store.start_analysis("cells.zip", "classification", {})
    app_store.finish_analysis(analysis_id, predictions=[
        PredictionRow("a.png", "EOS", "ALL", 0.99, {}, False, encode(cell_image("EOS", 1, 32)))])
    assert main(["report", str(analysis_id), "--out", str(tmp_path / "r.pdf"), "--wbc", "6"]) == 2
    assert "state the specimen (peripheral blood)" in capsys.readouterr().err  # "not stated" reads as a marrow's
    assert main(["report", str(analysis_id), "--out", str(tmp_path / "r.pdf"), "--wbc", "6",
                 "--specimen", "peripheral-blood"]) == 0
    assert "Eosinophils" in pdf_text((tmp_path / "r.pdf").read_bytes())
    assert main(["report", str(analysis_id), "--out", str(tmp_path / "r.html")]) == 0
    assert "Eosinophils" in (tmp_path / "r.html").read_text()
    assert main(["report", str(analysis_id), "--out", str(tmp_path / "r.docx")]) == 2
    assert main(["report", "12345", "--out", str(tmp_path / "x.pdf")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_amended_report_says_so_with_the_changes_after_the_first_sign_off(store):
    analysis_id = store.start_analysis("blood.zip", "classification", {})
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(["NGS", "NGS", "LYT"])])
    first, second, _ = store.get_analysis(analysis_id).predictions
    store.review(first.id, "NGB", "Dr Who")  # before the sign-off: a review, not an amendment
    store.sign_off(analysis_id, "Dr Who", category="peripheral blood", comment="Left shift.", target=100,
                   white_cell_count=4.0, specimen="peripheral blood")
    signed = build_report(store, analysis_id)
    assert (signed.status, signed.category, signed.comment, signed.target, signed.white_cell_count) == \
        ("signed", "peripheral blood", "Left shift.", 100, 4.0)  # what was signed, unless given
    text = pdf_text(to_pdf(signed))
    assert "Signed off by Dr Who on" in text and "AMENDED" not in text and "Changes after" not in text

    store.reopen(analysis_id, "Dr No", reason="second look")
    store.review(second.id, "MON", "Dr No")
    reopened = build_report(store, analysis_id, category="marrow")
    assert reopened.status == "reopened" and reopened.category == "marrow"
    assert "Reopened to amend by Dr No" in pdf_text(to_pdf(reopened))

    store.sign_off(analysis_id, "Dr No", category="peripheral blood")
    amended = build_report(store, analysis_id)
    assert amended.status == "amended"
    assert [(a.reviewer, a.cell, a.old_code, a.new_code) for a in amended.amendments] == [("Dr No", "c1.png", "NGS", "MON")]
    text = pdf_text(to_pdf(amended))
    for expected in ("Differential count - AMENDED", "Amended: signed off again by Dr No on",
                     "signed by Dr Who", "reopened by Dr No: second look", "signed by Dr No",
                     "Changes after the first sign-off", "c1.png", "Monocytes"):
        assert expected in text, expected
    assert "segmented neutrophil (NGS) -> monocyte (MON)" in " ".join(text.split())  # named: it said "NGS -> MON"
    assert text.index("signed by Dr Who") < text.index("reopened by Dr No") < text.rindex("signed by Dr No")
    page = to_html(amended)
    assert "Differential count - AMENDED" in page and "(NGS) -&gt; monocyte (MON)" in page and "second look" in page


def test_percentages_add_up_to_the_100_the_total_says(store, tree):
    """Each row rounded alone: NGS, LYT, MON printed 33 + 33 + 33 over "Total counted ... 100"."""
    rows, _, _ = clinical_rows(["NGS", "LYT", "MON"], tree)
    percent = {row.label: row.percent for row in rows if row.count}
    assert percent == {"Segmented neutrophils": 33.4, "Monocytes": 33.3, "Lymphocytes": 33.3}  # a tie: the first row
    eighteen = ["BLA"] * 5 + ["NGS"] * 5 + ["LYT"] * 5 + ["MON"] * 3  # 27.78 x 3 and 16.67 rounded alone: 100.01
    rows, _, _ = clinical_rows(eighteen, tree)
    assert [row.percent for row in rows if row.count] == [27.8, 27.8, 16.6, 27.8]  # 16.67: a tenth off at most
    assert round(sum(row.percent for row in rows), 6) == 100
    rows, _, _ = clinical_rows(["NGS"] + ["MON"] * 4 + ["LYT"] * 3, tree)  # exact in tenths: nothing to share
    assert [row.percent for row in rows if row.count] == [12.5, 50, 37.5]

    analysis_id = store.start_analysis("three.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.9, {}, False) for n, code in enumerate(["NGS", "LYT", "MON"])])
    text = pdf_text(to_pdf(build_report(store, analysis_id)))
    assert "Segmented neutrophils 1 33.4" in text and "Lymphocytes 1 33.3" in text and "Total counted 3 100.0" in text


def test_a_rows_percentage_is_never_more_than_a_tenth_off(tree):
    """In whole numbers 6 of 29 cells (20.7%) read 20% in one report and 21% in its amendment, where only
    other rows had changed (the points left over went to other rows' larger remainders)."""
    for others in (["NGS"] * 22 + ["MMZ"], ["NGS"] * 20 + ["MYB"] * 2 + ["MMZ"], ["EOS", "BAS", "MON"] * 7 + ["PMO"] * 2):
        rows, _, counted = clinical_rows(["LYT"] * 6 + others, tree)
        assert counted == 29
        assert {row.label: row.percent for row in rows}["Lymphocytes"] == 20.7
        assert all(abs(row.percent - 100 * row.count / counted) <= 0.1 for row in rows)


def test_a_cell_typed_only_to_an_inner_node_is_counted_in_the_row_a_lab_counts_it_in(tree):
    """A reviewer's "neutrophil, stage unclear" (NEU, key N) was reported under "Others"."""
    codes = ["NEU", "NGS", "NGB", "MYI", "MMZ", "BLA", "ERY", "THR", "MYM", "LYM", "HAC"]
    rows, apart, counted = clinical_rows(codes, tree)
    counts = {row.label: row.count for row in rows if row.count}
    assert counts == {"Blasts": 1, "Metamyelocytes": 1, "Immature granulocytes, stage unclear": 1,
                      "Band neutrophils": 1, "Segmented neutrophils": 2, "Hairy cells": 1,
                      "Erythroblasts": 1, "Others": 2}  # others: "mature myeloid", "lymphoid"
    assert {row.label: row.count for row in apart} == {"Platelets": 1} and counted == 10


def test_an_amended_report_lists_the_signed_values_changed(store):
    """Signed with 7.5 x 10^9/L, reopened, signed again with 8.0: the amended PDF showed only 8, and its
    changes listed only cells."""
    analysis_id = store.start_analysis("blood.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(["NGS", "LYT"])])
    store.sign_off(analysis_id, "Dr A", category="peripheral blood", comment="Normal.", target=100,
                   white_cell_count=7.5, specimen="peripheral blood")
    store.reopen(analysis_id, "Dr B", reason="count entered wrong")
    store.sign_off(analysis_id, "Dr B", category="peripheral blood", comment="Normal.", target=200,
                   white_cell_count=8.0, specimen="peripheral blood")
    report = build_report(store, analysis_id)
    assert report.status == "amended" and report.amendments == []  # no cell changed: its values did
    assert [(c.person, c.value, c.old, c.new) for c in report.value_changes] == [
        ("Dr B", "White-cell count", "7.5", "8"), ("Dr B", "Target", "100", "200")]
    text = pdf_text(to_pdf(report))
    for expected in ("Differential count - AMENDED", "Changes after the first sign-off", "White-cell count: 7.5 -> 8",
                     "Target: 100 -> 200", "Dr B"):
        assert expected in text, (expected, text)
    assert "Category peripheral blood ->" not in text  # what did not change is not listed
    assert "<td>White-cell count</td><td>7.5 -&gt; 8</td>" in to_html(report)


def test_a_long_comment_changed_after_sign_off_still_gives_a_pdf(store):
    """The changes were a table whose rows fpdf cannot break across pages: a comment of 450 characters,
    edited and signed again, gave "The row with index 1 is too high", for every later PDF of the analysis."""
    from bloodcells.store import COMMENT_LENGTH

    analysis_id = store.start_analysis("blood.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c0.png", "NGS", "ALL", 0.99, {}, False)])
    first = ("Normal morphology. " * COMMENT_LENGTH)[:COMMENT_LENGTH - 10] + " first end"
    second = ("Toxic granulation. " * COMMENT_LENGTH)[:COMMENT_LENGTH - 11] + " second end"
    store.sign_off(analysis_id, "Dr A", category="peripheral blood", comment=first)
    store.reopen(analysis_id, "Dr B", reason="wording")
    store.sign_off(analysis_id, "Dr B", category="peripheral blood", comment=second)
    text = pdf_text(to_pdf(build_report(store, analysis_id)))
    changes = text[text.index("Changes after the first sign-off"):]
    assert "Dr B · Comment: Normal morphology." in " ".join(changes.split())
    assert "first end -> Toxic granulation." in " ".join(changes.split())
    assert " ".join(changes.split()).endswith("second end Analysis #1 · Differential count - AMENDED · page 7 of 7")


def test_the_gallery_of_flagged_cells_breaks_between_rows_with_each_code_under_its_image(store):
    """Images are placed at a height: a gallery reaching the foot of a page put each image there and its
    code at the top of the next page (7 pages for 5 cells under a long name)."""
    from pypdf import PdfReader

    codes = ["BLA", "PMO", "MYB", "MMZ", "MON", "LYT", "EOS"] * 3
    broke_between_rows = False
    for words in range(0, 400, 25):  # longer names push the gallery down the first page, past its foot
        analysis_id = store.start_analysis("Ausstrich " * words + ".zip", "classification")
        store.finish_analysis(analysis_id, predictions=[
            PredictionRow(f"c{n}.png", code, "ALL", 0.4, {}, True, encode(cell_image(code, n, 32)))
            for n, code in enumerate(codes)])
        report = build_report(store, analysis_id)
        pages = PdfReader(io.BytesIO(to_pdf(report))).pages
        placed = [(len(re.findall(rb"/I\d+ Do", page.get_contents().get_data())), sum(page.extract_text().split().count(code) for code in set(codes)))
                  for page in pages]
        assert sum(images for images, _ in placed) == len(report.gallery) > 7
        assert all(labels >= images for images, labels in placed), (words, placed)  # codes under their images
        assert len(pages) <= 3, (words, placed)
        broke_between_rows |= sum(images > 0 for images, _ in placed) > 1
    assert broke_between_rows


def test_a_comments_tabs_and_windows_line_breaks_print_in_the_pdf(store):
    """A comment pasted from Windows with a tab: "WBC\t7.5\r\nsee note" printed "WBC7.5?"."""
    analysis_id = store.start_analysis("marrow.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "LYT", "ALL", 0.99, {}, False)])
    store.sign_off(analysis_id, "Dr A", comment="WBC\t7.5\r\nsee note")
    assert store.signoffs([analysis_id])[analysis_id][0].comment == "WBC\t7.5\nsee note"
    text = pdf_text(to_pdf(build_report(store, analysis_id)))
    assert "WBC 7.5" in text and "?" not in text and "see note" in text


def test_a_comment_keeps_its_line_breaks_in_the_html_report(store):
    analysis_id = store.start_analysis("marrow.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "LYT", "ALL", 0.99, {}, False)])
    page = to_html(build_report(store, analysis_id, comment="Line one.\nLine two."))
    assert "p.comment{white-space:pre-wrap}" in page and "<p class='comment'>Line one.\nLine two.</p>" in page


def test_a_blood_films_erythroblasts_are_reported_apart_per_100_white_cells_and_a_marrows_in_its_differential(store):
    """A peripheral-blood report counted erythroblasts among the white cells and printed a myeloid:erythroid
    ratio: 2 NGS, 1 LYT, 1 EBO read NGS 50% and M:E 2.00 : 1 on a blood film."""
    analysis_id = store.start_analysis("film.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(["NGS", "NGS", "LYT", "EBO"])])
    film = build_report(store, analysis_id, specimen="peripheral blood", white_cell_count=6.0)
    by_label = {row.label: row for row in film.rows}
    assert film.counted == 3 and "Erythroblasts" not in by_label and by_label["Segmented neutrophils"].percent == 66.7
    assert by_label["Segmented neutrophils"].per_litre == pytest.approx(4.0)  # of the white cells only
    assert {row.label: row.count for row in film.apart} == {"Erythroblasts": 1}
    assert film.erythroblasts_per_100 == pytest.approx(33.33, abs=0.01) and film.me_ratio is None
    text = pdf_text(to_pdf(film))
    for expected in ("Specimen peripheral blood", "33.3 per 100 white cells (not in the differential)",
                     "Erythroblasts: 1"):
        assert expected in text, (expected, text)
    assert "Myeloid" not in text and "Myeloid" not in to_html(film)
    marrow = build_report(store, analysis_id, specimen="bone marrow")
    assert marrow.counted == 4 and {row.label: row.count for row in marrow.rows}["Erythroblasts"] == 1
    assert marrow.me_ratio == pytest.approx(2.0) and marrow.erythroblasts_per_100 is None
    assert "Specimen bone marrow" in pdf_text(to_pdf(marrow)) and "2.00 : 1" in pdf_text(to_pdf(marrow))
    unstated = build_report(store, analysis_id)  # as every report read before the specimen was asked
    assert (unstated.counted, unstated.me_ratio, unstated.specimen) == (4, pytest.approx(2.0), None)
    assert "Specimen not stated" in pdf_text(to_pdf(unstated))


def test_the_signed_specimen_is_the_reports_and_a_change_is_an_amendment(store):
    from bloodcells.store import ReviewError

    analysis_id = store.start_analysis("film.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "EBO", "ALL", 0.99, {}, False),
                                                    PredictionRow("d.png", "LYT", "ALL", 0.99, {}, False)])
    with pytest.raises(ReviewError, match="specimen 'urine': a differential is of bone marrow or peripheral blood"):
        store.sign_off(analysis_id, "Dr A", specimen="urine")
    assert store.get_analysis(analysis_id).signoffs == []  # nothing stored
    with pytest.raises(ReportError, match="specimen 'blood': a differential is of bone marrow or peripheral blood"):
        build_report(store, analysis_id, specimen="blood")
    store.sign_off(analysis_id, "Dr A", specimen="bone marrow")
    assert build_report(store, analysis_id).specimen == "bone marrow"
    with pytest.raises(SignedReportError, match="the signed specimen; reopen"):
        build_report(store, analysis_id, specimen="peripheral blood")
    store.reopen(analysis_id, "Dr B", "a blood film, not marrow")
    store.sign_off(analysis_id, "Dr B", specimen="peripheral blood")
    report = build_report(store, analysis_id)
    assert report.status == "amended" and report.counted == 1
    assert [(c.value, c.old, c.new) for c in report.value_changes] == [("Specimen", "bone marrow", "peripheral blood")]
    assert "<td>Specimen</td><td>bone marrow -&gt; peripheral blood</td>" in to_html(report)


def test_cli_report_takes_the_specimen(app_store, tmp_path, capsys):
    from bloodcells.cli import main

    analysis_id = app_store.start_analysis("cells.zip", "classification", {})
    app_store.finish_analysis(analysis_id, predictions=[PredictionRow("a.png", "EBO", "ALL", 0.99, {}, False),
                                                        PredictionRow("b.png", "LYT", "ALL", 0.99, {}, False)])
    assert main(["report", str(analysis_id), "--out", str(tmp_path / "r.pdf"), "--specimen", "peripheral-blood"]) == 0
    assert "1 cell counted" in capsys.readouterr().out
    assert "Specimen peripheral blood" in pdf_text((tmp_path / "r.pdf").read_bytes())
    with pytest.raises(SystemExit):
        main(["report", str(analysis_id), "--out", str(tmp_path / "r.pdf"), "--specimen", "urine"])
    assert "invalid choice: 'urine'" in capsys.readouterr().err


def test_a_blood_film_with_no_white_cell_counted_is_reported(store):
    """Ten erythroblasts signed as peripheral blood with a white-cell count: every report of it (PDF, HTML,
    CLI) failed on formatting the missing per-litre figure; the signed record could not be printed."""
    analysis_id = store.start_analysis("erythroblasts.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", "EBO", "ALL", 0.99, {}, False) for n in range(10)])
    store.sign_off(analysis_id, "Dr A", specimen="peripheral blood", white_cell_count=5.0)
    report = build_report(store, analysis_id)
    assert report.counted == 0 and {row.label: row.count for row in report.apart} == {"Erythroblasts": 10}
    text = pdf_text(to_pdf(report))
    for expected in ("Total counted 0", "Erythroblasts 10 counted, no white cells to give them per 100",
                     "Erythroblasts: 10"):
        assert expected in text, (expected, text)
    assert "Erythroblasts: 10" in to_html(report)


def test_a_marrow_has_no_absolute_counts_and_an_unstated_specimen_is_said_so_when_amended(store):
    from bloodcells.store import ReviewError

    analysis_id = store.start_analysis("marrow.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow("c.png", "NGS", "ALL", 0.99, {}, False)])
    with pytest.raises(ReviewError, match="a bone marrow differential has no absolute counts: leave the white-cell"):
        store.sign_off(analysis_id, "Dr A", specimen="bone marrow", white_cell_count=7.5)
    with pytest.raises(ReportError, match="a bone marrow differential has no absolute counts"):
        build_report(store, analysis_id, specimen="bone marrow", white_cell_count=7.5)
    store.sign_off(analysis_id, "Dr A")  # as every sign-off before the specimen was asked
    store.reopen(analysis_id, "Dr B", "state the specimen")
    store.sign_off(analysis_id, "Dr B", specimen="bone marrow")
    assert [(c.value, c.old, c.new) for c in build_report(store, analysis_id).value_changes] == [
        ("Specimen", "not stated", "bone marrow")]  # it read "- -> bone marrow"


def test_a_reopened_analysiss_draft_without_a_count_has_none_and_may_be_a_marrow(store):
    """Signed as a blood film with 7.5 x 10^9/L, then reopened: the panel's count set to 0 ("not known")
    reached the report as "not given", so the draft printed absolute counts from the signed 7.5, and a marrow
    chosen there was refused ("a bone marrow differential has no absolute counts"): no PDF."""
    analysis_id = store.start_analysis("cells.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"c{n}.png", code, "ALL", 0.99, {}, False) for n, code in enumerate(["NGS", "LYT"])])
    store.sign_off(analysis_id, "Dr A", specimen="peripheral blood", white_cell_count=7.5)
    with pytest.raises(SignedReportError, match="the signed white-cell count"):  # signed: what was signed
        build_report(store, analysis_id, white_cell_count=0)
    store.reopen(analysis_id, "Dr B", "count not known")
    assert build_report(store, analysis_id).white_cell_count == 7.5  # not given: the one signed before
    draft = build_report(store, analysis_id, white_cell_count=0, specimen="peripheral blood")
    assert draft.white_cell_count is None and all(row.per_litre is None for row in draft.rows)
    assert "x 10^9/L" not in pdf_text(to_pdf(draft))
    marrow = build_report(store, analysis_id, white_cell_count=0, specimen="bone marrow")
    assert marrow.specimen == "bone marrow" and marrow.white_cell_count is None
    store.sign_off(analysis_id, "Dr B", specimen="peripheral blood")  # signed without a count: 0 is what was signed
    assert build_report(store, analysis_id, white_cell_count=0).white_cell_count is None


def test_a_detections_report_gives_its_red_cells_platelets_per_field_and_their_ratio(store):
    """A signed blood film from smear fields had only its white cells: no red cells, platelets or ratio."""
    from bloodcells.detection import DetectedBox, DetectionResult

    boxes = [DetectedBox("a.png", "WBC", 0.9, 0, 0, 9, 9, code="NGS")] \
        + [DetectedBox("a.png", "RBC", 0.9, 10 * n, 20, 10 * n + 9, 29) for n in range(6)] \
        + [DetectedBox("b.png", "RBC", 0.9, 10 * n, 20, 10 * n + 9, 29) for n in range(10)] \
        + [DetectedBox(file, "PLT", 0.9, 0, 40, 3, 43) for file in ("a.png", "b.png", "b.png")]
    result = DetectionResult(boxes=boxes, files=["a.png", "b.png"])
    analysis_id = store.start_analysis("fields.zip", "detection")
    store.finish_analysis(analysis_id, summary=result.summary(), detections=[
        DetectionRow(b.file, b.class_code, b.confidence, b.xyxy, b.code, b.code and f"ALL/{b.code}") for b in boxes])
    report = build_report(store, analysis_id)
    assert (report.smear.fields, report.smear.red_cells, report.smear.platelets) == (2, 16, 3)
    text = pdf_text(to_pdf(report))
    for expected in ("Smear fields 2 fields: 16 red cells, 3 platelets",
                     "red cells 8.0 ± 2.8 (range 6-10); platelets 1.5 ± 0.7 (range 1-2)",
                     "Platelets : red cells 0.188", "Specimen peripheral blood"):
        assert expected in text, (expected, text)
    cells = store.start_analysis("cells.zip", "classification")
    store.finish_analysis(cells, predictions=[PredictionRow("c.png", "NGS", "ALL", 0.99, {}, False)])
    assert build_report(store, cells).smear is None and "Smear fields" not in pdf_text(to_pdf(build_report(store, cells)))
