"""Classifying with the tiny trained tree (the session fixture ``trained_models_dir``)."""

from __future__ import annotations

import csv
import json
import shutil
import threading

import pytest

from bloodcells.classify import ModelFileError, TreeClassifier, classify, load_classifier
from bloodcells.synthetic import cell_image, write_cell_zip

CODES = ("LYT", "EOS", "NGB", "NGS")


def test_load_verifies_and_describes_every_node(trained_models_dir):
    classifier = TreeClassifier.load(trained_models_dir)
    assert set(classifier.nodes) == {"ALL", "MYM", "NEU"}
    assert classifier.passthrough == {"LYM": "LYT", "MYE": "MYM"}
    neu = classifier.nodes["NEU"]
    assert neu.classes == ["NGB", "NGS"]
    assert neu.input_size == 32
    assert neu.path.is_file() and len(neu.sha256) == 64
    assert neu.preprocess(cell_image("NGS", 1, 64)).shape == (3, 32, 32)
    assert not neu.module.training
    assert classifier.versions() == {code: node.sha256 for code, node in classifier.nodes.items()}


def test_tree_descends_to_leaves_with_product_confidence(trained_models_dir):
    classifier = TreeClassifier.load(trained_models_dir)
    results = classifier.classify_images([cell_image(code, 500 + n, 32) for code in CODES for n in range(5)])
    right = 0
    for index, result in enumerate(results):
        truth = CODES[index // 5]
        right += result.code == truth
        assert classifier.tree[result.code].is_leaf
        assert result.path == classifier.tree.path_codes(result.code)
        product = 1.0
        for node, probability in result.level_confidences.items():
            product *= probability
            chosen = classifier.tree.child_towards(node, result.code).code
            if node in result.probabilities:
                assert result.probabilities[node][chosen] == pytest.approx(probability)
                assert sum(result.probabilities[node].values()) == pytest.approx(1.0, abs=1e-4)
        assert result.confidence == pytest.approx(product)
        assert result.needs_review == (result.confidence < classifier.review_threshold)
    assert right / len(results) >= 0.7, [r.code for r in results]


def test_corrupt_or_missing_weights_are_named(trained_models_dir, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(trained_models_dir, copy)
    weights = copy / "NEU.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelFileError, match="NEU.safetensors"):
        TreeClassifier.load(copy)
    weights.unlink()
    with pytest.raises(ModelFileError, match="NEU.safetensors.*missing"):
        TreeClassifier.load(copy)
    with pytest.raises(ModelFileError, match="no trained classifier"):
        TreeClassifier.load(tmp_path / "nowhere")


def test_load_classifier_is_cached_and_reloads_after_retraining(trained_models_dir, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(trained_models_dir, copy)
    first = load_classifier(copy)
    assert load_classifier(copy) is first
    manifest = copy / "classifier.json"
    content = json.loads(manifest.read_text())
    content["review_threshold"] = 0.123
    manifest.write_text(json.dumps(content))
    second = load_classifier(copy)
    assert second is not first and second.review_threshold == 0.123


def test_concurrent_callers_get_the_same_answers(trained_models_dir):
    classifier = TreeClassifier.load(trained_models_dir)
    images = [cell_image(code, 700 + n, 32) for code in CODES for n in range(3)]
    expected = [r.code for r in classifier.classify_images(images)]
    answers, errors = [], []

    def work():
        try:
            answers.append([r.code for r in classifier.classify_images(images)])
        except Exception as error:  # noqa: BLE001 (reported by the assertion below)
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and answers == [expected] * 4


def test_classify_zip_writes_csv_and_stores_analysis(trained_models_dir, store, tmp_path):
    upload = write_cell_zip(tmp_path / "cells.zip", {code: 3 for code in CODES}, size=32)
    classifier = TreeClassifier.load(trained_models_dir)
    seen = []
    outcome = classify(upload, classifier=classifier, store=store, batch_size=5,
                       progress=lambda done, total: seen.append((done, total)))
    assert len(outcome.rows) == 12 and outcome.problems == []
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sum(outcome.counts().values()) == 12
    analysis = store.get_analysis(outcome.analysis_id)
    assert analysis.status == "done"
    assert analysis.model_versions == {"tree version": str(trained_models_dir), **classifier.versions()}
    stored = {p.filename: p for p in analysis.predictions}
    for filename, result in outcome.rows:
        assert stored[filename].code == result.code
        assert stored[filename].path == result.path
        assert stored[filename].needs_review == result.needs_review
    assert store.read_blob(blob_id=stored[outcome.rows[0].filename].blob_id)[:4] == b"\x89PNG"
    out = outcome.write_csv(tmp_path / "results.csv")
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    assert list(rows[0]) == ["file", "code", "name", "path", "confidence", "needs_review"]
    assert {r["file"] for r in rows} == set(stored)


def test_bad_members_are_reported_and_the_rest_classified(trained_models_dir, tmp_path):
    import zipfile

    upload = tmp_path / "mixed.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("good.png", _png(cell_image("LYT", 1, 32)))
        archive.writestr("broken.png", b"\x89PNG not really")
        archive.writestr("notes.txt", b"hello")
    seen = []
    outcome = classify(upload, classifier=TreeClassifier.load(trained_models_dir),
                       progress=lambda done, total: seen.append((done, total)))
    assert [row.filename for row in outcome.rows] == ["good.png"]
    assert {p.name.split("/")[-1] for p in outcome.problems} == {"broken.png", "notes.txt"}
    # the unreadable image was one of the two counted: the bar ends full, not at 1 of 2
    assert seen[-1] == (2, 2)
    assert outcome.analysis_id is None


def test_copies_of_one_image_are_said_with_the_counts(trained_models_dir, store, tmp_path, capsys):
    """cell.jpg, "cell - Copy.jpg" and "cell - Copy (2).jpg" (the same bytes) beside l.jpg gave "4 cells: NGB 3"
    and no word: one cell counted three times in the differential."""
    from bloodcells.cli import main
    from bloodcells.signout import build_report

    (tmp_path / "cells").mkdir()
    one, other = _png(cell_image("NGS", 1, 32)), _png(cell_image("LYT", 2, 32))
    for name, content in [("cell.png", one), ("cell - Copy.png", one), ("cell - Copy (2).png", one), ("l.png", other)]:
        (tmp_path / "cells" / name).write_bytes(content)
    outcome = classify(tmp_path / "cells", classifier=TreeClassifier.load(trained_models_dir), store=store)
    assert len(outcome.rows) == 4  # each analysed, as before
    [warning] = outcome.warnings
    assert warning.startswith("2 images of the upload repeat another (")  # which is "the copy" is not claimed
    assert "cell - Copy (2).png and cell.png are the same image" in warning and "counted as an image" in warning
    assert store.get_analysis(outcome.analysis_id).summary["warnings"] == [warning]  # History says it
    assert warning in build_report(store, outcome.analysis_id).notes  # and the report
    assert main(["classify", str(tmp_path / "cells"), "--models", str(trained_models_dir), "--no-store"]) == 0
    assert f"warning: {warning}" in capsys.readouterr().out
    (tmp_path / "cells" / "cell - Copy (2).png").unlink()
    (tmp_path / "cells" / "cell - Copy.png").unlink()
    assert classify(tmp_path / "cells", classifier=TreeClassifier.load(trained_models_dir)).warnings == []


def test_a_blank_frame_is_refused_not_typed_and_counted(trained_models_dir, tmp_path):
    """A black frame (a lamp-off or failed capture) was typed "blast" and counted in the differential."""
    import zipfile

    import numpy as np
    from PIL import Image

    dark = np.random.default_rng(0).normal(6, 1.5, (96, 96, 3)).clip(0, 255).astype(np.uint8)  # sensor noise
    upload = tmp_path / "with-blanks.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("cell.png", _png(cell_image("LYT", 1, 32)))
        archive.writestr("black.jpg", _png(Image.new("RGB", (96, 96))))
        archive.writestr("dark.png", _png(Image.fromarray(dark)))
        archive.writestr("background.png", _png(Image.new("RGB", (96, 96), (230, 200, 210))))
    outcome = classify(upload, classifier=TreeClassifier.load(trained_models_dir))
    assert [row.filename for row in outcome.rows] == ["cell.png"]
    assert sorted(map(str, outcome.problems)) == [
        "background.png: a blank image (one colour throughout, RGB 230, 200, 210): nothing to analyse; a failed "
        "or lamp-off capture?",
        "black.jpg: a blank image (one colour throughout, RGB 0, 0, 0): nothing to analyse; a failed or lamp-off "
        "capture?",
        "dark.png: a blank image (one colour throughout, RGB 6, 6, 6): nothing to analyse; a failed or lamp-off "
        "capture?"]


def test_the_bar_never_passes_its_end_and_moves_through_unreadable_files(trained_models_dir, tmp_path):
    """Members the count leaves out (an unsafe path) were counted again when skipped: "4 of 1"; a zip of
    unreadable files moved the bar only at its end."""
    import zipfile

    upload = tmp_path / "odd.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("good.png", _png(cell_image("LYT", 1, 32)))
        for n in range(3):
            archive.writestr(f"../escape{n}.png", _png(cell_image("LYT", n, 32)))
        for n in range(10):
            archive.writestr(f"broken{n}.png", b"\x89PNG not really")
    seen = []
    classify(upload, classifier=TreeClassifier.load(trained_models_dir), batch_size=4,
             progress=lambda done, total: seen.append((done, total)))
    assert all(done <= total for done, total in seen) and seen[-1][0] == seen[-1][1]
    assert len(seen) >= 3  # moved while the broken files were skipped, not only at the end


def test_a_batch_holds_its_images_at_the_size_the_tree_reads(trained_models_dir, tmp_path, monkeypatch):
    """Each decoded image waited whole for its batch: 64 images of 10,000 pixels a side held 19 GB."""
    classifier = TreeClassifier.load(trained_models_dir)
    upload = write_cell_zip(tmp_path / "big.zip", {"LYT": 2, "EOS": 2}, size=400)
    held, classify_images = [], TreeClassifier.classify_images

    def holding(self, images, *args, **kwargs):
        held.extend(images)
        return classify_images(self, images, *args, **kwargs)

    monkeypatch.setattr(TreeClassifier, "classify_images", holding)
    classify(upload, classifier=classifier)
    size = classifier.input_size
    assert len(held) == 4 and all(image.shape == (size, size, 3) for image in held)


def test_failure_marks_the_analysis_failed(trained_models_dir, store, tmp_path):
    from bloodcells.inputs import InputError

    not_a_zip = tmp_path / "cells.zip"
    not_a_zip.write_bytes(b"this is not a zip")
    with pytest.raises(InputError, match="cells.zip"):
        classify(not_a_zip, classifier=TreeClassifier.load(trained_models_dir), store=store)
    (analysis,) = store.list_analyses()
    assert analysis.status == "failed" and "cells.zip" in analysis.error


def _png(image) -> bytes:
    from bloodcells.synthetic import encode

    return encode(image)
