import zipfile

from bloodcells.synthetic import cell_image, smear_field, write_cell_zip, write_voc_dataset, write_yolo_dataset


def test_cells_differ_by_type_and_repeat_by_seed():
    assert cell_image("NGS", 1).tobytes() == cell_image("NGS", 1).tobytes()
    assert cell_image("NGS", 1).tobytes() != cell_image("LYT", 1).tobytes()


def test_smear_boxes_do_not_overlap_and_lie_inside():
    image, boxes = smear_field(640, 480, n_wbc=3, n_rbc=10, n_platelets=4, seed=3)
    assert image.size == (640, 480)
    assert [b.cls for b in boxes].count("WBC") == 3
    for i, a in enumerate(boxes):
        assert 0 <= a.x1 < a.x2 <= 640 and 0 <= a.y1 < a.y2 <= 480
        for b in boxes[i + 1:]:
            assert a.x2 < b.x1 or b.x2 < a.x1 or a.y2 < b.y1 or b.y2 < a.y1


def test_dataset_writers(tmp_path):
    archive = write_cell_zip(tmp_path / "cells.zip", {"NGS": 2, "LYT": 3})
    assert len(zipfile.ZipFile(archive).namelist()) == 5
    data_yaml = write_yolo_dataset(tmp_path / "yolo", n_train=2, n_val=1)
    assert "names" in data_yaml.read_text()
    assert len(list((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))) == 2
    voc = write_voc_dataset(tmp_path / "voc", n_train=2, n_val=1)
    assert len(list((voc / "Annotations").glob("*.xml"))) == 3
