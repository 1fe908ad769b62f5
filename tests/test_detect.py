"""Detection: dataset conversion, tiling and border merging, counting, typing white cells, storing."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from bloodcells.detection import (
    DEFAULT_BOX_CONFIDENCE,
    DETECTOR_CLASSES,
    DatasetError,
    DetectedBox,
    Detector,
    DetectorFileError,
    FoundBoxes,
    annotate,
    canonical_class,
    detect,
    prepare_dataset,
)
from bloodcells.detection.pipeline import cell_crop
from bloodcells.detection.tiling import merge_tiles, plan_tiles
from bloodcells.synthetic import (
    BACKGROUND,
    PLATELET_COLOUR,
    RBC_COLOUR,
    smear_field,
    write_voc_dataset,
    write_yolo_dataset,
)


# -- a detector for generated fields: finds the discs by colour ---------------------------------
class DiscDetector(Detector):
    """Finds generated discs as connected regions that differ from the background; the class
    follows the disc's colour. Tiles and merges exactly like the YOLO detector (only
    ``predict`` differs), so what it counts is what the tiling logic makes of whole and cut cells."""
    min_field_side = 32  # its discs are found at any size
    imgsz = 480  # the shipped model's input, for measuring magnified cells

    def __init__(self, tile_size: int = 640, overlap: int = 200):
        import threading

        self.tile_size, self.overlap, self.sha256, self.lock = tile_size, overlap, "disc-detector", threading.RLock()
        self.tiles_seen: list[tuple[int, int]] = []
        self.confidences_seen: set[float] = set()

    def predict(self, images, file="", *, confidence=DEFAULT_BOX_CONFIDENCE):
        from scipy import ndimage

        found = []
        self.confidences_seen.add(confidence)
        for image in images:
            self.tiles_seen.append(image.size)
            pixels = np.asarray(image).astype(int)
            regions, _ = ndimage.label(np.abs(pixels - BACKGROUND).max(axis=2) > 25)
            boxes = []
            for index, region in enumerate(ndimage.find_objects(regions), 1):
                ys, xs = region
                if (xs.stop - xs.start) * (ys.stop - ys.start) < 16:
                    continue  # anti-aliasing specks
                colour = np.median(pixels[region][regions[region] == index], axis=0)
                distance = {cls: np.abs(colour - ref).sum() for cls, ref in (("RBC", RBC_COLOUR),
                                                                           ("PLT", PLATELET_COLOUR))}
                cls = min(distance, key=distance.get)
                boxes.append(DetectedBox(file, cls if distance[cls] < 30 else "WBC", 0.9,
                                         xs.start, ys.start, xs.stop, ys.stop))
            found.append(FoundBoxes.of(boxes, capped=False))  # as Detector.predict gives them
        return found


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# -- datasets -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "code"), [("WBC", "WBC"), ("white blood cell", "WBC"), ("RBC", "RBC"),
                                            ("red_cell", "RBC"), ("Platelets", "PLT"), ("PC", "PLT"),
                                            ("platelet", "PLT"), ("neutrophil", None)])
def test_class_names_of_other_datasets_map_onto_ours(name, code):
    assert canonical_class(name) == code


def test_voc_folder_becomes_a_yolo_dataset_in_our_classes(tmp_path):
    voc = write_voc_dataset(tmp_path / "voc", n_train=3, n_val=2, size=(160, 120))
    prepared = prepare_dataset(voc, tmp_path / "yolo")
    assert prepared.counts["train"]["images"] == 3 and prepared.counts["val"]["images"] == 2
    spec = __import__("yaml").safe_load(prepared.yaml_path.read_text())
    assert spec["names"] == dict(enumerate(DETECTOR_CLASSES))
    for split in ("train", "val"):
        stems = (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        for stem in stems:
            labels = next((tmp_path / "yolo" / "labels" / split).rglob(f"*_{stem}.txt"))
            got = sorted(tuple(round(float(v), 4) for v in line.split()) for line in labels.read_text().splitlines())
            expected = []
            for obj in ElementTree.parse(voc / "Annotations" / f"{stem}.xml").getroot().iter("object"):
                x1, y1, x2, y2 = (float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                expected.append((DETECTOR_CLASSES.index(canonical_class(obj.findtext("name"))),
                                 round((x1 + x2) / 320, 4), round((y1 + y2) / 240, 4),
                                 round((x2 - x1) / 160, 4), round((y2 - y1) / 120, 4)))
            assert got == sorted(expected)
            image = next((tmp_path / "yolo" / "images" / split).rglob(f"*_{stem}.jpg"))
            assert image.read_bytes() == (voc / "JPEGImages" / f"{stem}.jpg").read_bytes()


def test_yolo_dataset_with_another_class_order_is_relabelled(tmp_path):
    write_yolo_dataset(tmp_path / "src", n_train=2, n_val=1, size=(128, 96))
    order = ["Platelets", "WBC", "RBC"]  # rewrite the source as if its ids were in this order
    source_names = ["WBC", "RBC", "Platelets"]
    for label in (tmp_path / "src" / "labels").rglob("*.txt"):
        label.write_text("".join(f"{order.index(source_names[int(line.split()[0])])} {line.split(' ', 1)[1]}\n"
                                 for line in label.read_text().splitlines()))
    (tmp_path / "src" / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames: [Platelets, WBC, RBC]\n")
    prepared = prepare_dataset(tmp_path / "src", tmp_path / "out")
    original = (tmp_path / "src" / "labels" / "train" / "field_000.txt").read_text().splitlines()
    converted = next((tmp_path / "out" / "labels" / "train").rglob("*field_000.txt")).read_text().splitlines()
    assert [DETECTOR_CLASSES[int(c.split()[0])] for c in converted] == \
        [canonical_class(order[int(o.split()[0])]) for o in original]
    assert prepared.counts["train"]["images"] == 2


def test_training_images_identical_to_validation_images_are_left_out(tmp_path):
    write_yolo_dataset(tmp_path / "src", n_train=3, n_val=2, size=(128, 96))
    # the same field published twice: once in val, once again in train under another name
    shutil.copyfile(tmp_path / "src" / "images" / "val" / "field_000.jpg",
                    tmp_path / "src" / "images" / "train" / "copy_of_val.jpg")
    prepared = prepare_dataset(tmp_path / "src", tmp_path / "out")
    assert prepared.counts["train"] == {"images": 3, "skipped_duplicates": 0, "skipped_leaks": 1}
    assert not list((tmp_path / "out" / "images" / "train").rglob("*copy_of_val*"))


def test_unknown_class_names_are_an_error_naming_the_file(tmp_path):
    voc = write_voc_dataset(tmp_path / "voc", n_train=1, n_val=0, size=(128, 96))
    xml = next((voc / "Annotations").glob("*.xml"))
    xml.write_text(xml.read_text().replace("<name>RBC</name>", "<name>Neutrophil</name>", 1))
    with pytest.raises(DatasetError, match=rf"{xml.name}.*Neutrophil"):
        prepare_dataset(voc, tmp_path / "out")
    with pytest.raises(DatasetError, match="neither a YOLO dataset"):
        prepare_dataset(tmp_path, tmp_path / "out2")


# -- tiling -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(4000, 3000), (1401, 641), (640, 480), (700, 2000)])
def test_tiles_cover_the_image_and_overlap(width, height):
    tile, overlap = 640, 160
    tiles = plan_tiles(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for t in tiles:
        assert t.x >= 0 and t.y >= 0 and t.x + t.width <= width and t.y + t.height <= height
        covered[t.y:t.y + t.height, t.x:t.x + t.width] = True
    assert covered.all()
    xs = sorted({t.x for t in tiles})
    assert all(b - a <= tile - overlap for a, b in zip(xs, xs[1:], strict=False))
    assert max(t.x + t.width for t in tiles) == width


def test_a_cell_across_a_tile_border_is_counted_once():
    image, truth = smear_field(1400, 1050, n_wbc=6, n_rbc=40, n_platelets=12, seed=3)
    detector = DiscDetector(tile_size=640, overlap=200)
    tiles = plan_tiles(*image.size, 640, 200)
    inner_edges_x = {t.x for t in tiles if t.x > 0} | {t.x + t.width for t in tiles if t.x + t.width < 1400}
    cut = [b for b in truth if any(b.x1 < x < b.x2 for x in inner_edges_x)]
    assert cut, "the field should have cells lying across a tile border"
    # every tile on its own sees the cut cells, partly or whole: the raw tile boxes overcount
    raw = detector.predict([image.crop((t.x, t.y, t.x + t.width, t.y + t.height)) for t in tiles])
    assert sum(len(boxes) for boxes in raw) > len(truth)

    boxes = detector.find(image, "field.png")
    assert len(detector.tiles_seen) > len(tiles)  # find() tiled the image itself
    assert len(boxes) == len(truth)
    for cell in truth:  # generated cells never overlap: each box centre lies in its own cell
        matches = [b for b in boxes if cell.x1 < (b.x1 + b.x2) / 2 < cell.x2 and cell.y1 < (b.y1 + b.y2) / 2 < cell.y2]
        assert len(matches) == 1 and matches[0].class_code == canonical_class(cell.cls)


def test_merge_keeps_the_whole_view_of_a_cut_cell_and_one_copy_of_a_doubly_seen_one():
    tiles = plan_tiles(1000, 500, 600, 200)  # x = 0 and 400, overlap 400..600
    left = [DetectedBox("f", "WBC", 0.7, 520, 100, 600, 180),  # cut by the left tile's right edge
            DetectedBox("f", "RBC", 0.8, 420, 300, 470, 350)]  # whole, in the overlap
    right = [DetectedBox("f", "WBC", 0.9, 520, 100, 640, 190),  # the same cell, whole
             DetectedBox("f", "RBC", 0.6, 421, 301, 471, 351),
             DetectedBox("f", "RBC", 0.6, 430, 100, 480, 150)]  # another cell
    merged = merge_tiles([left, right], tiles, 1000, 500)
    assert sorted((b.class_code, b.confidence, b.x1) for b in merged) == [
        ("RBC", 0.6, 430), ("RBC", 0.8, 420), ("WBC", 0.9, 520)]


# -- detect: counts, typing, storage --------------------------------------------------------------
def _fields(folder, count=2, codes=("NGS",), size=(480, 360)):
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for n in range(count):
        image, truth = smear_field(*size, n_wbc=3, n_rbc=10, n_platelets=3, seed=40 + n, wbc_codes=codes)
        image.save(folder / f"field_{n}.png")
        truths[f"field_{n}.png"] = truth
    return truths


def test_detect_counts_per_image_and_per_upload_and_stores_them(tmp_path, store):
    truths = _fields(tmp_path / "upload")
    (tmp_path / "upload" / "broken.png").write_bytes(b"not an image")
    result = detect(tmp_path / "upload", detector=DiscDetector(), type_white_cells=False, store=store, name="slides")

    assert [p.name for p in result.problems] == ["broken.png"]
    assert result.typing_skipped == "white-cell typing switched off"
    for file, truth in truths.items():
        assert result.counts(file) == {code: sum(canonical_class(b.cls) == code for b in truth)
                                       for code in DETECTOR_CLASSES}
    assert result.counts() == {code: sum(result.counts(f)[code] for f in truths) for code in DETECTOR_CLASSES}

    analysis = store.get_analysis(result.analysis_id)
    assert (analysis.name, analysis.kind, analysis.status) == ("slides", "detection", "done")
    assert analysis.model_versions == {"detector": "disc-detector"}
    stored = sorted((d.filename, d.class_code, round(d.x1, 1), round(d.y2, 1)) for d in analysis.detections)
    assert stored == sorted((b.file, b.class_code, round(b.x1, 1), round(b.y2, 1)) for b in result.boxes)
    assert analysis.summary["counts"] == result.counts()
    assert analysis.summary["per_image"]["field_1.png"]["counts"] == result.counts("field_1.png")


def test_problems_in_a_zip_are_named_by_their_path_inside_it(tmp_path):
    """The zip's reader named one kind ``mixed.zip/readme.txt``, the decoder another ``sub/broken.jpg``."""
    import zipfile

    from bloodcells.synthetic import encode

    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as archive:
        archive.writestr("field.png", encode(smear_field(480, 360, seed=1)[0]))
        archive.writestr("readme.txt", b"fields of one slide")
        archive.writestr("sub/broken.jpg", b"not an image")
    result = detect(tmp_path / "mixed.zip", detector=DiscDetector(), type_white_cells=False)
    assert result.files == ["field.png"]
    assert [p.name for p in result.problems] == ["readme.txt", "sub/broken.jpg"]


def test_a_failing_detection_is_stored_as_failed_without_boxes(tmp_path, store):
    _fields(tmp_path / "upload", count=2)

    class FailsOnSecondImage(DiscDetector):
        def find(self, image, file="", **options):
            if file == "field_1.png":
                raise RuntimeError("out of memory")
            return super().find(image, file, **options)

    with pytest.raises(RuntimeError):
        detect(tmp_path / "upload", detector=FailsOnSecondImage(), type_white_cells=False, store=store)
    analysis = store.list_analyses(kind="detection")[0]
    assert analysis.status == "failed" and "out of memory" in analysis.error
    assert store.get_analysis(analysis.id).detections == []


def test_the_minimum_box_confidence_is_passed_on_each_call(tmp_path):
    _fields(tmp_path / "upload", count=1)
    detector = DiscDetector()
    detect(tmp_path / "upload", detector=detector, type_white_cells=False)
    detect(tmp_path / "upload", detector=detector, type_white_cells=False, confidence=0.6)
    assert detector.confidences_seen == {DEFAULT_BOX_CONFIDENCE, 0.6}


def test_switching_typing_off_leaves_a_given_classifier_unused(tmp_path):
    class Unusable:
        def versions(self):
            raise AssertionError("typing is off: the classifier must not be asked")

        classify_images = versions

    _fields(tmp_path / "upload", count=1)
    result = detect(tmp_path / "upload", detector=DiscDetector(), classifier=Unusable(), type_white_cells=False)
    assert result.typing_skipped == "white-cell typing switched off"
    assert result.counts()["WBC"] == 3 and all(b.code is None for b in result.boxes)


def test_white_cells_are_typed_through_the_classifier_tree(tmp_path, trained_models_dir, store):
    from bloodcells.classify import load_classifier

    classifier = load_classifier(trained_models_dir)
    codes = ("LYT", "EOS", "NGS")
    truths = _fields(tmp_path / "upload", count=4, codes=codes)
    result = detect(tmp_path / "upload", detector=DiscDetector(), classifier=classifier, store=store)

    white = [b for b in result.boxes if b.class_code == "WBC"]
    assert len(white) == sum(b.cls == "WBC" for truth in truths.values() for b in truth)
    assert result.typing_skipped is None
    assert all(b.code and b.path.endswith(b.code) and 0 < b.sub_confidence <= 1 for b in white)
    assert all(b.code is None for b in result.boxes if b.class_code != "WBC")
    # most white cells come back as the type they were generated as (chance: 1 in 4 leaves); the
    # tiny tree is not perfect even on whole generated cells, hence not all of them
    right = [b.code == _generated_code(truths[b.file], b, codes) for b in white]
    assert sum(right) >= 0.6 * len(right)

    differential = result.differential()
    assert sum(v["count"] for v in differential.values()) == len(white)
    assert sum(v["percent"] for v in differential.values()) == pytest.approx(100, abs=0.2)
    stored = store.get_analysis(result.analysis_id)
    assert sorted((d.code, d.path) for d in stored.detections if d.class_code == "WBC") == \
        sorted((b.code, b.path) for b in white)
    assert stored.summary["differential"] == differential
    assert set(stored.model_versions) == {"detector", "tree version",
                                          *(f"classifier:{c}" for c in classifier.versions())}
    assert stored.model_versions["tree version"] == classifier.tree_version


def test_typed_white_cells_are_kept_as_cells_to_review_flagged_like_classified_ones(tmp_path, trained_models_dir,
                                                                                      store):
    """A white cell typed at 0.44 on a field was flagged nowhere (History "needs review 0", the report
    "flagged, not reviewed 0"): the same crop on the Explanation page was "flagged for review". Nor could a
    detected cell be corrected. Each typed white cell the differential counts is now a cell of the analysis:
    its crop, the tree's answer and its flag, reviewed on the Review page."""
    from bloodcells.classify import load_classifier
    from bloodcells.inputs import open_image
    from bloodcells.signout import build_report, differential_codes

    classifier = load_classifier(trained_models_dir)
    _fields(tmp_path / "upload", count=2, codes=("LYT", "EOS", "NGS"))
    result = detect(tmp_path / "upload", detector=DiscDetector(), classifier=classifier, store=store)
    white = sorted((b for b in result.boxes if b.class_code == "WBC"), key=lambda b: (b.file, b.x1, b.y1))
    cells = store.get_analysis(result.analysis_id).predictions
    assert sorted((c.filename, c.code, round(c.confidence, 6)) for c in cells) == sorted(
        (f"{b.file} · white cell at ({b.x1:.0f}, {b.y1:.0f})", b.code, round(b.sub_confidence, 6)) for b in white)
    # as a classified cell of that crop would be: the same answer, flagged the same way
    crops = classifier.classify_images([cell_crop(open_image((tmp_path / "upload" / b.file).read_bytes()), b)
                                        for b in white])
    by_name = {c.filename: c for c in cells}
    for box, again in zip(white, crops, strict=True):
        cell = by_name[f"{box.file} · white cell at ({box.x1:.0f}, {box.y1:.0f})"]
        assert (cell.code, cell.needs_review) == (again.code, again.needs_review)
        assert open_image(store.read_blob(cell.blob_id)).size == cell_crop(open_image(
            (tmp_path / "upload" / box.file).read_bytes()), box).size
    flagged = [c for c in cells if c.needs_review]
    assert build_report(store, result.analysis_id).unreviewed_flagged == len(flagged)
    # a reviewer's type is the one the differential counts
    store.review(cells[0].id, "BAS", "dr.a", seen=None)
    reviewed = store.get_analysis(result.analysis_id)
    assert sorted(differential_codes(reviewed)) == sorted(["BAS", *(c.code for c in cells[1:])])
    assert any(row.label.startswith("Basophil") and row.count == 1 for row in build_report(store, reviewed.id).rows)
    assert build_report(store, reviewed.id).unreviewed_flagged == len(flagged) - cells[0].needs_review
    # the detection CSV says the reviewed type beside the model's (it said the model's beside a PDF of the other)
    from bloodcells import report as reports
    from bloodcells.data import load_dataset

    records = reports.detection_records(reviewed)
    assert [r["reviewed_code"] for r in records if r["code"]].count("BAS") == 1
    assert all(r["reviewed_code"] == "" for r in records if not r["code"])
    # the corrected labels read back for training: named by their field, the crops had no image suffix
    from bloodcells.taxonomy import default_tree

    reviewed.predictions = [p for p in reviewed.predictions if p.reviewed]  # as the Review page exports them
    exported = tmp_path / "labels.zip"
    exported.write_bytes(reports.labelled_zip(reports.reviewed_cells(store, reviewed)))
    assert load_dataset([exported], default_tree(), 32).labels == ["BAS"]


def _generated_code(truth, box, codes) -> str:
    """The type smear_field gave the white cell under ``box``: the n-th white cell placed
    (counting from 1) gets ``codes[n % len(codes)]``."""
    whites = [b for b in truth if b.cls == "WBC"]
    nearest = max(range(len(whites)), key=lambda i: _iou(box.xyxy, (whites[i].x1, whites[i].y1, whites[i].x2,
                                                                    whites[i].y2)))
    return codes[(nearest + 1) % len(codes)]


def test_without_a_classifier_detection_still_works_and_says_typing_was_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(tmp_path / "no-models"))
    _fields(tmp_path / "upload", count=1)
    result = detect(tmp_path / "upload", detector=DiscDetector())
    assert result.counts()["WBC"] == 3
    assert "no classifier" in result.typing_skipped and "classifier.json" in result.typing_skipped
    assert all(b.code is None for b in result.boxes)


def test_annotate_draws_each_class_in_its_colour():
    from bloodcells.detection.drawing import CLASS_COLOURS

    image = Image.new("RGB", (200, 100), (255, 255, 255))
    boxes = [DetectedBox("f", "WBC", 0.9, 10, 30, 60, 80, code="NGS", path="ALL/MYE/MYM/NEU/NGS",
                         sub_confidence=0.8),
             DetectedBox("f", "RBC", 0.7, 120, 40, 170, 90)]
    drawn = annotate(image, boxes)
    assert drawn.size == image.size and image.getpixel((10, 60)) == (255, 255, 255)
    assert drawn.getpixel((10, 60)) == CLASS_COLOURS["WBC"]
    assert drawn.getpixel((170, 70)) == CLASS_COLOURS["RBC"]
    only_red = annotate(image, boxes, classes=["RBC"])
    assert only_red.getpixel((10, 60)) == (255, 255, 255)


def test_a_cell_type_without_the_trees_confidence_is_drawn_with_the_boxs():
    """A type given by hand carries no tree confidence: the label shows the box's (it used to raise)."""
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    typed_by_hand = annotate(image, [DetectedBox("f", "WBC", 0.9, 10, 30, 60, 80, code="LYT")])
    assert typed_by_hand.getpixel((10, 60)) != (255, 255, 255)


def test_a_white_cell_a_reviewer_typed_is_labelled_with_the_reviewers_type():
    """The field was drawn with the model's type beside a differential that counted the reviewer's."""
    from bloodcells.detection.drawing import CLASS_COLOURS

    image = Image.new("RGB", (200, 100), (255, 255, 255))
    cell = DetectedBox("f.png", "WBC", 0.9, 10, 30, 60, 80, code="MON", path="ALL/MYE/MYM/MON", sub_confidence=0.8)
    red = DetectedBox("f.png", "RBC", 0.9, 120, 30, 170, 80)
    as_typed = np.asarray(annotate(image, [cell, red]))
    reviewed = np.asarray(annotate(image, [cell, red], reviewed={cell.cell_name: "NGS"}))
    assert not np.array_equal(as_typed[:30, :100], reviewed[:30, :100])  # the white cell's label changed
    assert np.array_equal(as_typed[:, 100:], reviewed[:, 100:])  # the red cell's did not
    # "NGS reviewed" is a longer label than "MON 0.80": its coloured band reaches further right
    def label_end(drawn):
        return np.flatnonzero((drawn[20, :100] == CLASS_COLOURS["WBC"]).all(axis=1)).max()

    assert label_end(reviewed) > label_end(as_typed) + 10
    # a review of a cell elsewhere (another field's) changes nothing here
    assert np.array_equal(as_typed, np.asarray(annotate(image, [cell, red], reviewed={"other.png · white cell "
                                                                                       "at (10, 30)": "NGS"})))


def test_damaged_detector_weights_are_named(tmp_path):
    weights = tmp_path / "detector.pt"
    weights.write_bytes(b"garbage")
    with pytest.raises(DetectorFileError, match="detector.pt"):
        Detector.load(weights)
    with pytest.raises(DetectorFileError, match="missing"):
        Detector.load(tmp_path / "absent.pt")


def test_detector_weights_unlike_their_training_record_are_refused(trained_detector, tmp_path):
    """4 KB overwritten inside the shipped detector.pt: it loaded, found no cell on any field ("0 cells"),
    and the Home page listed it as usual. Training records the weights' sha256 in metrics.json beside them."""
    folder = shutil.copytree(trained_detector.parent, tmp_path / "detector")
    weights = folder / trained_detector.name
    assert Detector.load(weights).sha256 == json.loads((folder / "metrics.json").read_text())["sha256"]
    intact = weights.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2:len(damaged) // 2 + 4096] = bytes(4096)
    weights.write_bytes(bytes(damaged))
    with pytest.raises(DetectorFileError, match=r"detector.pt: damaged or replaced \(its sha256 is .*metrics.json"):
        Detector.load(weights)
    own = shutil.copytree(trained_detector.parent, tmp_path / "own", ignore=shutil.ignore_patterns("metrics.json"))
    assert Detector.load(own / trained_detector.name).sha256 == Detector.load(trained_detector).sha256  # no record
    assert json.loads((folder / "metrics.json").read_text())["weights"] == "detector.pt"  # the file it describes
    weights.write_bytes(intact)
    record = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**record, "sha256": "0" * 64}))  # another detector.pt's
    shutil.copyfile(trained_detector, folder / "other.pt")  # weights the record does not describe: not checked
    assert Detector.load(folder / "other.pt").sha256 == Detector.load(trained_detector).sha256
    from bloodcells.report import detector_overview

    assert detector_overview(Detector.load(folder / "other.pt"))["val mAP50"] == ""  # not detector.pt's scores
    with pytest.raises(DetectorFileError, match="damaged or replaced"):
        Detector.load(weights)


# -- the real YOLO path -----------------------------------------------------------------------------
def test_detecting_leaves_torch_thread_count_alone(trained_detector):
    """ultralytics sets torch's process-wide threads to cores - 1; the app's classifiers share them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Detector.load(trained_detector).find(smear_field(160, 120, seed=3)[0], "x.png", confidence=0.001)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_field_too_small_for_the_detector_is_skipped_with_its_size(trained_detector, tmp_path):
    """A 20x20 crop of a field's corner, in a zip of fields, was magnified to the detector's input and gave
    a white cell that was typed and counted in the slide's differential."""
    import zipfile

    from bloodcells.inputs import open_image
    from bloodcells.synthetic import encode

    field, _ = smear_field(160, 120, seed=7)
    corner = encode(field.crop((0, 0, 20, 20)))
    with zipfile.ZipFile(tmp_path / "fields.zip", "w") as archive:
        archive.writestr("field.png", encode(field))
        archive.writestr("corner.png", corner)
    detector = Detector.load(trained_detector)
    assert detector.min_field_side == detector.imgsz // 2 == 32
    result = detect(tmp_path / "fields.zip", detector=detector, type_white_cells=False, confidence=0.001, slide=True,
                    annotate_to=tmp_path / "drawn")
    assert result.files == ["field.png"] and [f.file for f in result.slide.fields] == ["field.png"]
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == ["field.png"]
    assert {b.file for b in result.boxes} == {"field.png"}
    [problem] = result.problems
    assert problem.name == "corner.png"
    assert problem.problem.startswith("20x20 pixels is too small for a smear field (at least 32 pixels")
    assert open_image(corner, "corner.png").size == (20, 20)  # as a single cell it is still classified


def test_a_blank_field_is_refused_not_counted_as_a_field_of_no_cells(tmp_path):
    """A blank field (a lamp-off capture) in a slide counted as a field of 0 red cells and 0 platelets."""
    class Counting:
        sha256, min_field_side = "c" * 64, 32

        def find(self, image, file="", *, confidence):
            return [DetectedBox(file, "RBC", 0.9, 0, 0, 5, 5)]

    smear_field(320, 240, seed=5)[0].save(tmp_path / "field.png")
    Image.new("RGB", (320, 240)).save(tmp_path / "black.png")
    result = detect(tmp_path, detector=Counting(), type_white_cells=False)
    assert result.files == ["field.png"] and [str(p) for p in result.problems] == [
        "black.png: a blank image (one colour throughout, RGB 0, 0, 0): nothing to analyse; a failed or lamp-off "
        "capture?"]


@pytest.mark.slow
def test_trained_yolo_detector_finds_boxes_and_tiles_large_images(trained_detector, tmp_path):
    detector = Detector.load(trained_detector)
    assert detector.imgsz == 64 and set(detector.classes.values()) == set(DETECTOR_CLASSES)
    small, _ = smear_field(160, 120, seed=7)
    large, _ = smear_field(700, 400, seed=8)
    for image in (small, large):
        boxes = detector.find(image, "x.png", confidence=0.001)
        assert boxes, "a very low threshold always yields boxes"
        assert all(0 <= b.x1 < b.x2 <= image.width + 1 and 0 <= b.y1 < b.y2 <= image.height + 1 for b in boxes)
        assert {b.class_code for b in boxes} <= set(DETECTOR_CLASSES)
    assert detector.needs_tiles(*large.size) and not detector.needs_tiles(*small.size)


def test_one_loaded_yolo_detector_keeps_each_calls_minimum_confidence(trained_detector):
    detector = Detector.load(trained_detector)
    field, _ = smear_field(160, 120, seed=7)
    everything = detector.find(field, "x.png", confidence=0.001)
    threshold = sorted(b.confidence for b in everything)[len(everything) // 2]  # the median box's confidence
    sure = detector.find(field, "x.png", confidence=threshold)
    assert sure and all(b.confidence >= threshold for b in sure)
    assert len(sure) < len(everything)
    assert len(detector.find(field, "x.png", confidence=0.001)) == len(everything)  # nothing kept between calls


def discs(width: int, height: int, diameter: int, spacing: int) -> tuple[Image.Image, int]:
    from PIL import ImageDraw

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw, count = ImageDraw.Draw(image), 0
    for y in range(spacing // 2, height - diameter // 2, spacing):
        for x in range(spacing // 2, width - diameter // 2, spacing):
            draw.ellipse((x - diameter // 2, y - diameter // 2, x + diameter // 2, y + diameter // 2), fill=RBC_COLOUR)
            count += 1
    return image, count


def test_a_photo_whose_cells_are_magnified_is_shrunk_to_the_training_scale_before_tiling():
    """How shrinking works (the shipped detector on a real field: test_shipped_detector): cells of 400 px are
    measured at 4x, found at the training scale and boxed in the photo's pixels; cells at the training scale,
    or too small at the model's input to be measured, are tiled as they are."""
    finder = DiscDetector(tile_size=960, overlap=240)
    photo, cells = discs(2560, 1920, diameter=400, spacing=520)
    boxes = finder.find(photo, "photo.png")
    assert finder.needs_tiles(*photo.size) and len(boxes) == cells == 15
    whole, shrunk = finder.tiles_seen  # looked at whole, then found shrunk about 4x, untiled
    assert whole == photo.size and shrunk[0] == pytest.approx(640, abs=5) and shrunk[1] == pytest.approx(480, abs=5)
    assert all(380 <= b.x2 - b.x1 <= 420 for b in boxes)  # in the photo's pixels
    assert finder.magnification(photo) == pytest.approx(4.0, rel=0.02)
    scan, cells = discs(3200, 2400, diameter=90, spacing=200)  # cells at the training scale: tiled as before
    assert finder.magnification(scan) == 1.0 and len(finder.find(scan, "scan.png")) == cells
    at_the_threshold, _ = discs(1300, 975, diameter=140, spacing=200)  # 1.4x: tiled as it is
    assert finder.magnification(at_the_threshold) == pytest.approx(1.4, rel=0.03)
    finder.tiles_seen.clear()
    finder.find(at_the_threshold, "x.png")
    assert finder.tiles_seen[1:] == [(960, 960)] * 4  # after the look, its tiles at full size
    # a mosaic of magnified fields: 300 px cells are 36 px at the model's input whole, 75 px in its centre
    # two tiles wide, which tells
    mosaic, _ = discs(4000, 3000, diameter=300, spacing=420)
    assert finder.magnification(mosaic) == pytest.approx(3.0, rel=0.03)
    too_small, _ = discs(3200, 2400, diameter=60, spacing=150)  # 15 px at the input whole, 30 in the centre
    assert finder.magnification(too_small) == 1.0


def test_counts_not_to_be_trusted_are_said_with_why(tmp_path):
    """A minimum box confidence of 0 filled a field with 1000 boxes (174 "white cells") in silence; a greyscale
    field gave 17 red cells and 1 platelet for 22 and 4, and the same field as a GIF 21 and 1 (13 and
    0 dithered to the web palette)."""
    from bloodcells.detection.detector import MAX_BOXES

    class Saturated:
        sha256, min_field_side = "s" * 64, 32

        def find(self, image, file="", *, confidence):
            if file == "specks.png":  # a call of the model gave its most
                return FoundBoxes.of([DetectedBox(file, "RBC", 0.01, 0, 0, 5, 5)] * MAX_BOXES, capped=True)
            return [DetectedBox(file, "RBC", 0.01, 0, 0, 5, 5)] * 3

    colour, _ = smear_field(320, 240, seed=5)
    colour.save(tmp_path / "specks.png")
    colour.convert("L").save(tmp_path / "grey.png")
    smear_field(320, 240, seed=6)[0].save(tmp_path / "fine.png")  # not a copy of specks.png: that is said too
    colour.quantize(256).save(tmp_path / "palette.gif")
    colour.convert("L").quantize(256).save(tmp_path / "grey-palette.png")  # said once, as greyscale
    result = detect(tmp_path, detector=Saturated(), type_white_cells=False, confidence=0.0)
    from bloodcells.detection.pipeline import low_confidence_warning

    assert result.warnings[0] == low_confidence_warning(0.0)  # said once, first: 949 boxes gave no warning
    assert "0.000 counts boxes the detector doubts" in result.warnings[0]
    assert sorted(result.warnings[1:]) == [  # the fields in whatever order the folder lists them
        "grey-palette.png: a greyscale image: the detector learnt stained colour fields, and finds fewer red cells "
        "and platelets on it; use the colour original",
        "grey.png: a greyscale image: the detector learnt stained colour fields, and finds fewer red cells and "
        "platelets on it; use the colour original",
        "palette.gif: a palette image (a GIF or an 8-bit PNG) of at most 256 colours: the detector finds fewer red "
        "cells and platelets on it; use the camera's original (JPEG, PNG or TIFF)",
        "specks.png: the detector gave the most boxes it gives (1000) for the image or one of its tiles: cells "
        "beyond them were not counted"]
    assert result.summary()["warnings"] == result.warnings and sorted(result.files) == [
        "fine.png", "grey-palette.png", "grey.png", "palette.gif", "specks.png"]
    # a tiled scan's boxes, none of its calls capped: 5,459 real cells on 225 fields were "specks", "raise it"
    Saturated.find = lambda _self, image, file="", *, confidence: FoundBoxes.of(
        [DetectedBox(file, "RBC", 0.9, 0, 0, 5, 5)] * 5 * MAX_BOXES, capped=False)
    scan = detect(tmp_path, detector=Saturated(), type_white_cells=False)
    assert not any("boxes" in warning for warning in scan.warnings)
    assert not any("confidence" in warning for warning in scan.warnings)  # at the default
    colour.save(tmp_path / "copy of specks.png")  # the same field twice: its cells counted twice, said
    assert [w for w in detect(tmp_path, detector=Saturated(), type_white_cells=False).warnings if "same" in w] == [
        "1 image of the upload repeats another (copy of specks.png and specks.png are the same image): each was "
        "analysed and counted as an image of its own"]
    on_slide = detect(tmp_path, detector=Saturated(), type_white_cells=False, slide=True)  # the copy: over it
    assert [w for w in on_slide.warnings if "same" in w] == [
        "1 image of the upload repeats another (copy of specks.png and specks.png are the same image): each lies "
        "over the other, so its cells are counted once, but each counts as a field in the means per field"]


def test_a_tile_the_model_gave_its_most_boxes_for_marks_the_images_boxes(trained_detector, monkeypatch):
    """Merged tiles hold fewer boxes than their calls gave: a capped tile could not be told from the total."""
    detector = Detector.load(trained_detector)
    side = detector.tile_size
    calls = []

    def predict(images, file="", *, confidence):
        calls.append(len(images))
        return [FoundBoxes.of([], capped=len(calls) == 1 and n == 0) for n in range(len(images))]

    monkeypatch.setattr(detector, "predict", predict)
    monkeypatch.setattr(detector, "magnification", lambda image: 1.0)
    scan = Image.new("RGB", (4 * side, 3 * side), (230, 220, 225))
    assert detector.find(scan, "scan.png").capped and sum(calls) > 1  # one tile of several
    calls.clear()
    monkeypatch.setattr(detector, "predict", lambda images, file="", *, confidence: [
        FoundBoxes.of([], capped=False) for _ in images])
    assert not detector.find(scan, "scan.png").capped


@pytest.mark.parametrize("box, field, crop", [
    ((100, 100, 140, 140), (640, 480), (86, 86, 154, 154)),  # a cell: its box and a margin of 0.35 a side
    ((0, 0, 10, 10), (640, 480), (0, 0, 16, 16)),  # a speck in a corner: 14 px cut by the edges, widened
    ((300, 200, 304, 204), (640, 480), (294, 194, 310, 210)),  # a speck inside: widened about its centre
    ((630, 470, 640, 480), (640, 480), (624, 464, 640, 480)),  # the far corner
    ((0, 100, 60, 160), (640, 480), (0, 79, 81, 181)),  # cut by the left edge: the part inside, as before
])
def test_a_white_cells_crop_is_framed_and_never_under_the_smallest_image(box, field, crop):
    """The crop is stored as the cell's image and read back like an upload, which must be 16 px a side: a
    14 px crop of a box in a corner made every report of the analysis fail."""
    from PIL import Image

    from bloodcells.inputs import MIN_IMAGE_SIDE

    image = Image.new("RGB", field)
    cut = cell_crop(image, DetectedBox("f.png", "WBC", 0.9, *box))
    assert min(cut.size) >= MIN_IMAGE_SIDE and cut.size == (crop[2] - crop[0], crop[3] - crop[1])
    marked = image.copy()
    marked.paste((255, 0, 0), crop)
    assert cell_crop(marked, DetectedBox("f.png", "WBC", 0.9, *box)).getcolors() == [
        ((crop[2] - crop[0]) * (crop[3] - crop[1]), (255, 0, 0))]  # exactly those pixels
