"""AppTest of the Detection page: a detector that finds exactly the cells drawn on generated fields,
and the tiny trained tree typing the white ones."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from bloodcells.detection import DetectedBox, Detector, canonical_class
from bloodcells.store import open_store
from bloodcells.synthetic import Box, encode, smear_field

ROOT = Path(__file__).resolve().parents[1]


class DrawnCells:
    """A detector (``Detector``'s interface as ``detect`` uses it) that finds the cells ``smear_field``
    drew, where it drew them, and records the minimum confidence each call asked for."""
    sha256 = "d" * 64
    min_field_side = 32  # smaller fields are skipped, as by Detector

    def __init__(self, fields: dict, by_size: bool = False):
        self.fields = fields  # file name (or with by_size, the field's size) -> smear_field's true boxes
        self.by_size = by_size
        self.confidences: list[float] = []

    def find(self, image, file: str = "", *, confidence: float) -> list[DetectedBox]:
        self.confidences.append(confidence)
        return [DetectedBox(file, canonical_class(box.cls), 0.9, box.x1, box.y1, box.x2, box.y2)
                for box in self.fields[image.size if self.by_size else file]]


@pytest.fixture
def models_root(tmp_path, monkeypatch, trained_models_dir):
    root = tmp_path / "models"
    (root / "classifier").mkdir(parents=True)
    (root / "classifier" / "default").symlink_to(trained_models_dir, target_is_directory=True)
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    return root


@pytest.mark.slow
def test_detection_boxes_counts_and_saves(models_root, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", url)
    store = open_store(url)
    drawn = {f"field{n}.png": smear_field(128, 96, seed=n) for n in range(2)}
    # a field where no cell is found: the smear's background and its grain (one flat colour is refused as blank)
    grain = np.random.default_rng(0).normal((236, 226, 230), 16, (96, 128, 3))
    blank = Image.fromarray(grain.clip(0, 255).astype(np.uint8))
    detector = DrawnCells({"blank.png": [], **{name: boxes for name, (_, boxes) in drawn.items()}})
    # The page's detector comes from Detector.load (through ui.models' cache, keyed by this test's models dir).
    monkeypatch.setattr(Detector, "load", classmethod(lambda _cls, *_args, **_options: detector))
    fields = [(name, encode(image), "image/png") for name, (image, _) in drawn.items()]
    fields.append(("blank.png", encode(blank), "image/png"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/1_Detection.py").run()
    assert not at.exception and not at.warning
    at.sidebar.number_input(key="box_confidence").set_value(0.4)
    at.file_uploader[0].set_value(fields).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error
    assert detector.confidences == [0.4, 0.4, 0.4]  # the sidebar's minimum, for each image

    [analysis] = store.list_analyses()
    stored = store.get_analysis(analysis.id).detections
    drawn_boxes = [box for _, boxes in drawn.values() for box in boxes]
    assert analysis.kind == "detection" and analysis.status == "done" and len(stored) == len(drawn_boxes)
    assert any(f"analysis #{analysis.id}" in s.value and f"{len(stored)} cells on 3 images" in s.value
               for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "3"  # the blank field counts: the banner and the metric agree
    for cls in ("WBC", "RBC", "PLT"):
        assert metrics[cls] == str(sum(canonical_class(box.cls) == cls for box in drawn_boxes))
    at.selectbox(key="detection_image").select("field0.png").run()
    annotated = [image for image in at.image if image.proto.imgs[0].caption.startswith("field0.png")]
    assert len(annotated) == 1
    labels = {b.label for b in at.get("download_button")}
    assert {"Download annotated PNG", "Download CSV"} <= labels
    assert not any("minimum box confidence" in i.value for i in at.info)
    at.sidebar.number_input(key="box_confidence").set_value(0.5).run()  # the count shown is still the 0.4 one
    assert any("found at a minimum box confidence of 0.400; press **Detect** to count them at 0.500" in i.value
               for i in at.info)
    # Each white cell is typed through the tree, and the white-cell differential counts them all.
    white = [d for d in stored if d.class_code == "WBC"]
    assert len(white) == sum(box.cls == "WBC" for box in drawn_boxes) > 0
    assert all(d.code and d.path.startswith("ALL/") for d in white)
    assert at.dataframe[0].value["count"].sum() == len(white)
    # ... and each is a cell of the analysis, flagged like a classified one, reviewed on the Review page
    cells = store.get_analysis(analysis.id).predictions
    flagged = sum(c.needs_review for c in cells)
    assert len(cells) == len(white) and any(
        f"{len(white)} white cells typed" in c.value and (f"{flagged} flagged for review, not reviewed yet" in c.value
                                                          if flagged else "none flagged for review" in c.value)
        for c in at.caption)
    review = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)  # another user's session
    review.switch_page("pages/4_Review.py").run()
    assert not review.exception
    [listed] = review.selectbox(key="review_analysis").options
    assert listed.startswith(f"#{analysis.id} · ") and listed.endswith("(white cells of smear fields)")
    assert {m.label: m.value for m in review.metric}["Reviewed"] == f"0 of {len(white)}"
    # a type a reviewer gave is the one the field is labelled with (it showed the model's beside a corrected count)
    def field0_drawn():
        return next(i.proto.imgs[0].url for i in at.image if i.proto.imgs[0].caption.startswith("field0.png"))

    before = field0_drawn()
    at.run()
    assert field0_drawn() == before  # the same drawing is the same image
    cell = next(c for c in cells if c.filename.startswith("field0.png · "))
    store.review(cell.id, "BAS" if cell.code != "BAS" else "EOS", "dr.b", seen=None)
    at.run()
    assert field0_drawn() != before

    at.pills(key="detection_classes").set_value(["RBC"]).run()  # toggle classes off: the image is redrawn
    assert not at.exception
    at.selectbox(key="detection_image").select("field1.png").run()
    assert any(image.proto.imgs[0].caption.startswith("field1.png") for image in at.image)

    store.delete_analysis(analysis.id)  # as the History page does, in this or another session
    assert store.start_analysis("another user's field.png", "detection") != analysis.id
    at.run()
    assert not at.exception
    assert [i.value for i in at.info] == [f"Analysis #{analysis.id} was deleted in History: detect again to see "
                                          "its cells."]
    assert "detection" not in at.session_state


def _fields_of_one_smear(origins: dict[str, tuple[int, int]], size=(640, 480)):
    """Crops of one generated smear, each with the true boxes of the cells (or the parts of them) it shows."""
    image, truth = smear_field(1100, 480, n_wbc=6, n_rbc=40, n_platelets=12, seed=21)
    fields = {}
    for name, (x0, y0) in origins.items():
        boxes = [Box(b.cls, max(b.x1 - x0, 0), max(b.y1 - y0, 0), min(b.x2 - x0, size[0]), min(b.y2 - y0, size[1]))
                 for b in truth]
        fields[name] = (image.crop((x0, y0, x0 + size[0], y0 + size[1])),
                        [b for b in boxes if b.x2 - b.x1 >= 4 and b.y2 - b.y1 >= 4])
    return fields


@pytest.mark.slow
def test_slide_mode_counts_the_fields_as_one_slide(models_root, app_store, monkeypatch):
    fields = _fields_of_one_smear({"f1.png": (0, 0), "f2.png": (230, 0), "f3.png": (460, 0)})  # 64% shared
    detector = DrawnCells({name: boxes for name, (_, boxes) in fields.items()})
    monkeypatch.setattr(Detector, "load", classmethod(lambda _cls, *_args, **_options: detector))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/1_Detection.py").run()
    at.toggle(key="slide_mode").set_value(True).run()
    at.file_uploader[0].set_value([(name, encode(image), "image/png") for name, (image, _) in fields.items()]).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error

    [analysis] = app_store.list_analyses()
    stored = app_store.get_analysis(analysis.id)
    found = sum(len(boxes) for _, boxes in fields.values())
    assert 0 < len(stored.detections) < found  # the cells two fields share are kept once
    slide = stored.summary["slide"]
    assert [(o["first"], o["second"]) for o in slide["overlaps"]] == [("f1.png", "f2.png"), ("f1.png", "f3.png"),
                                                                       ("f2.png", "f3.png")]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Fields"] == "3" and metrics["Overlapping groups"] == "1"
    counts = {cls: sum(d.class_code == cls for d in stored.detections) for cls in ("WBC", "RBC", "PLT")}
    assert metrics["Platelets : red cells"] == f"{counts['PLT'] / counts['RBC']:.3f}"
    red = [sum(canonical_class(b.cls) == "RBC" for b in boxes) for _, boxes in fields.values()]
    assert metrics["Red cells per field"].startswith(f"{sum(red) / 3:.1f} ± ")
    statement = f"Differential: {counts['WBC']} of 100 white cells: target not reached (3 fields)."
    flagged = sum(p.needs_review for p in stored.predictions)  # its typed white cells, to review on Review
    assert len(stored.predictions) == counts["WBC"]  # every white cell the differential took, short of the target
    said = [statement] + ([f"{flagged} flagged cell{'s are' if flagged != 1 else ' is'} not reviewed yet."] if flagged else [])
    assert [w.value for w in at.warning] == said
    [per_field] = [table.value for table in at.dataframe if "RBC found" in table.value.columns]
    assert per_field["RBC found"].tolist() == red and per_field["field"].tolist() == list(fields)

    at.switch_page("pages/5_History.py").run()  # the slide's count is kept with the analysis
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Fields"] == "3"
    assert [w.value for w in at.warning] == said
    # a cell reviewed on Review: the slide's differential and the whole one count its type
    app_store.review(stored.predictions[0].id, "BAS", "Dr A")
    at.run()
    tables = [list(t.value["cell type"]) for t in at.dataframe if "cell type" in t.value.columns]
    assert len(tables) == 2 and all("Basophils" in table for table in tables)
    # one reviewed as unidentified leaves the count: the heading said the count as detected over the table's
    # "Cells counted" one fewer (and a report of one fewer)
    app_store.review(stored.predictions[1].id, "NIF", "Dr A")
    at.run()
    slide_heading = next(w.value for w in at.warning if w.value.startswith("Differential: "))
    assert slide_heading.startswith(f"Differential: {counts['WBC'] - 1} of 100 white cells: target not reached "
                                    f"(3 fields). {counts['WBC']} were counted as the fields were detected")
    assert any(c.value.startswith(f"Cells counted: {counts['WBC'] - 1}. ") for c in at.caption)


@pytest.mark.slow
def test_uploads_of_one_name_are_each_shown_under_a_name_of_their_own(models_root, app_store, monkeypatch):
    """field.jpg (A), field.jpg (B) and field-1.jpg (C): the table showed B's counts as field-1.jpg's, and C
    as field-1-2.jpg."""
    sizes = {"field.jpg": (320, 240), "field (2).jpg": (352, 240), "field-1.jpg": (384, 240)}  # the names expected
    drawn = {name: smear_field(*size, n_wbc=1, n_rbc=4 * (n + 1), n_platelets=1, seed=n)
             for n, (name, size) in enumerate(sizes.items())}
    detector = DrawnCells({sizes[name]: boxes for name, (_, boxes) in drawn.items()}, by_size=True)
    monkeypatch.setattr(Detector, "load", classmethod(lambda _cls, *_args, **_options: detector))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/1_Detection.py").run()
    at.toggle(key="slide_mode").set_value(True).run()
    uploaded = ["field.jpg", "field.jpg", "field-1.jpg"]
    at.file_uploader[0].set_value([(upload, encode(image, "JPEG"), "image/jpeg")
                                   for upload, (image, _) in zip(uploaded, drawn.values(), strict=True)]).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error

    red = {name: sum(box.cls == "RBC" for box in boxes) for name, (_, boxes) in drawn.items()}
    [per_field] = [table.value for table in at.dataframe if "RBC found" in table.value.columns]
    assert dict(zip(per_field["field"], per_field["RBC found"], strict=True)) == red
    assert sorted(at.selectbox(key="detection_image").options) == sorted(sizes)


@pytest.mark.slow
def test_the_page_says_one_file_and_counts_cells_in_words(models_root, app_store, monkeypatch):
    """It said "1 files were skipped" and captioned a field "1 white cell, 3 red cell, 2 platelet"."""
    image, boxes = smear_field(320, 240, n_wbc=1, n_rbc=3, n_platelets=2, seed=5)
    detector = DrawnCells({"field.png": boxes, "moving.gif": boxes})
    monkeypatch.setattr(Detector, "load", classmethod(lambda _cls, *_args, **_options: detector))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/1_Detection.py").run()
    at.file_uploader[0].set_value([("field.png", encode(image), "image/png"),
                                   ("broken.png", b"not an image", "image/png")]).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error

    assert [e.label for e in at.expander if "skipped" in e.label] == ["1 file was skipped"]
    assert [i.proto.imgs[0].caption for i in at.image] == ["field.png: 1 white cell, 3 red cells, 2 platelets"]
    # an animated GIF is counted on its first page: it was counted among the files skipped as well
    animated = io.BytesIO()
    image.save(animated, "GIF", save_all=True, append_images=[image.rotate(90), image.rotate(180)])
    at.file_uploader[0].set_value([("field.png", encode(image), "image/png"), ("moving.gif", animated.getvalue(),
                                                                             "image/gif"),
                                   ("broken.png", b"not an image", "image/png")]).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error
    assert [e.label for e in at.expander if "not read" in e.label] == [
        "1 file was skipped; later pages of 1 file not read"]
    assert {m.label: m.value for m in at.metric}["Images"] == "2"
