"""AppTest of the Detection page with the tiny trained detector and tree."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bloodcells.store import open_store
from bloodcells.synthetic import encode, smear_field

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models_root(tmp_path, monkeypatch, trained_models_dir, trained_detector):
    root = tmp_path / "models"
    (root / "classifier").mkdir(parents=True)
    (root / "classifier" / "default").symlink_to(trained_models_dir, target_is_directory=True)
    (root / "detector").symlink_to(trained_detector.parent, target_is_directory=True)
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    return root


@pytest.mark.slow
def test_detection_boxes_counts_and_saves(models_root, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    monkeypatch.setenv("BLOODCELLS_DATABASE_URL", url)
    store = open_store(url)
    fields = [(f"field{n}.png", encode(smear_field(128, 96, seed=n)[0]), "image/png") for n in range(2)]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/1_Detection.py").run()
    assert not at.exception and not at.warning
    at.sidebar.number_input(key="box_confidence").set_value(0.001)  # the 1-epoch detector is unsure of everything
    at.file_uploader[0].set_value(fields).run()
    at.button(key="detect").click().run()
    assert not at.exception and not at.error

    [analysis] = store.list_analyses()
    stored = store.get_analysis(analysis.id).detections
    assert analysis.kind == "detection" and analysis.status == "done" and stored
    assert any(f"analysis #{analysis.id}" in s.value and f"{len(stored)} cells on 2 images" in s.value
               for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "2"
    for cls in {d.class_code for d in stored}:
        assert metrics[cls] == str(sum(d.class_code == cls for d in stored))
    annotated = [image for image in at.image if image.proto.imgs[0].caption.startswith("field0.png")]
    assert len(annotated) == 1
    labels = {b.label for b in at.get("download_button")}
    assert {"Download annotated PNG", "Download CSV"} <= labels
    white = [d for d in stored if d.class_code == "WBC"]
    if white:  # typed through the tree: the white-cell differential is shown
        assert all(d.code for d in white)
        assert at.dataframe[0].value["count"].sum() == len(white)

    at.pills(key="detection_classes").set_value(["RBC"]).run()  # toggle classes off: the image is redrawn
    assert not at.exception
    at.selectbox(key="detection_image").select("field1.png").run()
    assert any(image.proto.imgs[0].caption.startswith("field1.png") for image in at.image)
