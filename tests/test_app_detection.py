"""AppTest of the Detection page: a detector that finds exactly the cells drawn on generated fields,
and the tiny trained tree typing the white ones."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bloodcells.detection import DetectedBox, Detector, canonical_class
from bloodcells.store import open_store
from bloodcells.synthetic import encode, smear_field

ROOT = Path(__file__).resolve().parents[1]


class DrawnCells:
    """A detector (``Detector``'s interface as ``detect`` uses it) that finds the cells ``smear_field``
    drew, where it drew them, and records the minimum confidence each call asked for."""
    sha256 = "d" * 64

    def __init__(self, fields: dict[str, list]):
        self.fields = fields  # file name -> smear_field's true boxes
        self.confidences: list[float] = []

    def find(self, image, file: str = "", *, confidence: float) -> list[DetectedBox]:
        self.confidences.append(confidence)
        return [DetectedBox(file, canonical_class(box.cls), 0.9, box.x1, box.y1, box.x2, box.y2)
                for box in self.fields[file]]


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
    detector = DrawnCells({name: boxes for name, (_, boxes) in drawn.items()})
    # The page's detector comes from Detector.load (through ui.models' cache, keyed by this test's models dir).
    monkeypatch.setattr(Detector, "load", classmethod(lambda _cls, *_args, **_options: detector))
    fields = [(name, encode(image), "image/png") for name, (image, _) in drawn.items()]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/1_Detection.py").run()
    assert not at.exception and not at.warning
    at.sidebar.number_input(key="box_confidence").set_value(0.4)
    at.file_uploader[0].set_value(fields).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error
    assert detector.confidences == [0.4, 0.4]  # the sidebar's minimum, for each image

    [analysis] = store.list_analyses()
    stored = store.get_analysis(analysis.id).detections
    drawn_boxes = [box for _, boxes in drawn.values() for box in boxes]
    assert analysis.kind == "detection" and analysis.status == "done" and len(stored) == len(drawn_boxes)
    assert any(f"analysis #{analysis.id}" in s.value and f"{len(stored)} cells on 2 images" in s.value
               for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "2"
    for cls in ("WBC", "RBC", "PLT"):
        assert metrics[cls] == str(sum(canonical_class(box.cls) == cls for box in drawn_boxes))
    annotated = [image for image in at.image if image.proto.imgs[0].caption.startswith("field0.png")]
    assert len(annotated) == 1
    labels = {b.label for b in at.get("download_button")}
    assert {"Download annotated PNG", "Download CSV"} <= labels
    # Each white cell is typed through the tree, and the white-cell differential counts them all.
    white = [d for d in stored if d.class_code == "WBC"]
    assert len(white) == sum(box.cls == "WBC" for box in drawn_boxes) > 0
    assert all(d.code and d.path.startswith("ALL/") for d in white)
    assert at.dataframe[0].value["count"].sum() == len(white)

    at.pills(key="detection_classes").set_value(["RBC"]).run()  # toggle classes off: the image is redrawn
    assert not at.exception
    at.selectbox(key="detection_image").select("field1.png").run()
    assert any(image.proto.imgs[0].caption.startswith("field1.png") for image in at.image)
