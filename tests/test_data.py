"""Training data: sources, labels through the tree, count table, splits, balancing, augmentation."""

from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np
import pytest

from bloodcells.data import (
    balance_target,
    balanced_indices,
    count_table,
    format_count_table,
    load_dataset,
    node_targets,
    split_indices,
    to_tensor,
)
from bloodcells.inputs import InputError
from bloodcells.synthetic import cell_image, write_cell_folders, write_cell_zip
from bloodcells.taxonomy import UnknownLabelError


def test_folders_at_any_depth_zip_and_csv_resolve_through_the_tree(tree, tmp_path):
    # PBC-style: folder names and file-name prefixes, nested two levels down
    pbc = tmp_path / "pbc"
    for folder, stem in [("site1/neutrophil", "BNE_1"), ("site1/neutrophil", "SNE_2"), ("site2/ig", "MY_3"),
                         ("site2/ig", "IG_4"), ("site2/basophil", "BA_5")]:
        (pbc / folder).mkdir(parents=True, exist_ok=True)
        cell_image(stem, 0, 40).save(pbc / folder / f"{stem}.jpg")
    matek = write_cell_zip(tmp_path / "matek.zip", {"NGS": 2, "LYT": 1}, size=40)
    table = tmp_path / "labels.csv"
    cell_image("x", 0, 40).save(tmp_path / "a.png")
    cell_image("y", 0, 40).save(tmp_path / "b.png")
    table.write_text("path,label,patient\na.png,eosinophil,p1\nb.png,PMY,p2\n")
    dataset = load_dataset([pbc, matek, table], tree, size=24)
    found = dict(zip(dataset.names, dataset.labels, strict=True))
    assert found["site1/neutrophil/BNE_1.jpg"] == "NGB"
    assert found["site1/neutrophil/SNE_2.jpg"] == "NGS"
    assert found["site2/ig/MY_3.jpg"] == "MYB"
    assert found["site2/ig/IG_4.jpg"] == "MYI"  # a bare 'ig' stops at the inner node
    assert found["site2/basophil/BA_5.jpg"] == "BAS"
    assert Counter(dataset.labels)["NGS"] == 3 and found["LYT/LYT_00000.png"] == "LYT"
    assert found["a.png"] == "EOS" and found["b.png"] == "PMO"
    assert dataset.groups[-2:] == ["p1", "p2"] and dataset.sources[-1] == "labels.csv"
    assert dataset.images.shape == (len(dataset), 24, 24, 3) and dataset.images.dtype == np.uint8
    assert len(dataset.fingerprint()) == 64
    assert dataset.fingerprint() == load_dataset([pbc, matek, table], tree, size=24).fingerprint()


def test_unknown_labels_and_bad_files_name_the_file(tree, tmp_path):
    write_cell_folders(tmp_path / "cells", {"LYT": 2}, size=24)
    (tmp_path / "cells" / "LYT" / "LYT_broken.png").write_bytes(b"not an image")
    dataset = load_dataset([tmp_path / "cells"], tree, size=16)
    assert len(dataset) == 2 and any("LYT_broken.png" in p for p in dataset.problems)
    write_cell_folders(tmp_path / "odd", {"martian": 1}, size=24)
    with pytest.raises(UnknownLabelError, match="martian"):
        load_dataset([tmp_path / "odd"], tree, size=16)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,kind\nx.png,LYT\n")
    with pytest.raises(InputError, match="bad.csv.*'path' and 'label'"):
        load_dataset([bad_csv], tree, size=16)
    with pytest.raises(InputError, match="nowhere"):
        load_dataset([tmp_path / "nowhere"], tree, size=16)


def test_images_labelled_only_at_the_root_are_reported_not_silently_dropped(tree, tmp_path):
    """'cells' names the root: unsorted images in a cells/ folder taught no node, without a word."""
    write_cell_folders(tmp_path / "upload" / "cells", {"LYT": 2}, size=24)
    cell_image("x", 0, 24).save(tmp_path / "upload" / "cells" / "unsorted.png")
    dataset = load_dataset([tmp_path / "upload"], tree, size=16)
    assert sorted(dataset.labels) == ["LYT", "LYT"]
    assert [p for p in dataset.problems if "unsorted.png" in p] == [
        "upload/cells/unsorted.png: labelled all cells (the tree's root), which says no cell type: put it in a "
        "class folder"]


def test_coarse_labels_train_only_the_nodes_above(tree):
    labels = ["NGS", "NGB", "MYI", "MYB", "LYT", "MYE"]
    assert node_targets(tree, "ALL", labels) == {0: "MYE", 1: "MYE", 2: "MYE", 3: "MYE", 4: "LYM", 5: "MYE"}
    assert node_targets(tree, "MYE", labels) == {0: "MYM", 1: "MYM", 2: "MYI", 3: "MYI"}  # not 5
    assert node_targets(tree, "MYI", labels) == {3: "MYB"}  # the bare MYI label stops above
    table = count_table(tree, labels)
    assert table["NEU"] == Counter({"NGS": 1, "NGB": 1})
    assert "MYI" in table and table["MYI"] == Counter({"MYB": 1})
    text = format_count_table(tree, table, {"NEU": 7})
    assert "ALL/MYE/MYM/NEU  -> 7 per child" in text and "one child only" in text


def test_split_is_stratified_deterministic_and_disjoint():
    labels = ["A"] * 100 + ["B"] * 50 + ["C"] * 20
    first = split_indices(labels, seed=3)
    assert {k: v.tolist() for k, v in first.items()} == {k: v.tolist() for k, v in split_indices(labels, seed=3).items()}
    assert {k: v.tolist() for k, v in first.items()} != {k: v.tolist() for k, v in split_indices(labels, seed=4).items()}
    everything = np.concatenate(list(first.values()))
    assert sorted(everything.tolist()) == list(range(len(labels)))
    for part, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        counts = Counter(labels[i] for i in first[part])
        for label, total in Counter(labels).items():
            assert abs(counts[label] - share * total) <= 1.5, (part, label, counts)


def test_grouped_split_keeps_each_patient_in_one_split():
    rng = np.random.default_rng(0)
    patients = [f"p{n}" for n in range(30)]
    groups = [patients[i % 30] for i in range(300)]
    labels = [["A", "B", "C"][int(rng.integers(3))] for _ in range(300)]
    splits = split_indices(labels, groups, seed=0)
    where = {}
    for part, indices in splits.items():
        for i in indices:
            assert where.setdefault(groups[i], part) == part, f"patient {groups[i]} in two splits"
    assert {len(set(where.values()))} == {3}


def test_split_of_fewer_than_ten_cells_a_type_deals_cells_or_patients_round_the_folds():
    """Regression: with under ten cells of every type (a lab's first 8 + 8), the stratified split
    failed with scikit-learn's "n_splits=10 cannot be greater than the number of members in each
    class" and training stopped."""
    labels = ["LYT"] * 8 + ["MON"] * 8
    splits = split_indices(labels, seed=0)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(16))
    assert len(splits["train"]) == 12 and len(splits["val"]) == len(splits["test"]) == 2
    groups = [f"p{n // 2}" for n in range(16)]  # two cells a patient
    grouped = split_indices(labels, groups, seed=0)
    where = {}
    for part, indices in grouped.items():
        for i in indices:
            assert where.setdefault(groups[i], part) == part, f"patient {groups[i]} in two splits"
    assert set(where.values()) == {"train", "val", "test"}


def test_balancing_undersamples_and_oversamples_to_the_target():
    assert balance_target(Counter({"a": 50, "b": 500}), min_per_class=10) == 50
    assert balance_target(Counter({"a": 50, "b": 500}), min_per_class=1000) == 1000
    assert balance_target(Counter({"a": 50, "b": 500}), per_class=80) == 80
    targets = {i: "big" for i in range(500)} | {i: "small" for i in range(500, 530)}
    order, repeats = balanced_indices(targets, 100, np.random.default_rng(0))
    kinds = Counter(targets[i] for i in order)
    assert kinds == Counter({"big": 100, "small": 100})
    small = [i for i in order if targets[i] == "small"]
    assert set(small) == set(range(500, 530))  # every small image is used, then repeated
    assert repeats.sum() == 70 and all(targets[i] == "small" for i in order[repeats])
    big = [i for i in order if targets[i] == "big"]
    assert len(set(big)) == 100  # undersampling draws without replacement
    again, _ = balanced_indices(targets, 100, np.random.default_rng(1))
    assert set(again) != set(order)  # a fresh draw each epoch


def test_augmentation_changes_pixels_but_keeps_shape():
    from bloodcells.data import augmentation

    image = np.asarray(cell_image("NGS", 0, 48))
    for cross_site in (False, True):
        pipeline = augmentation(cross_site=cross_site)
        out = [pipeline(image=image)["image"] for _ in range(4)]
        assert all(o.shape == image.shape and o.dtype == np.uint8 for o in out)
        assert any(not np.array_equal(o, image) for o in out)


def test_per_image_normalisation_removes_a_colour_cast():
    image = np.asarray(cell_image("EOS", 0, 32)).astype(np.int16)
    bluer = np.clip(image + np.array([-30, -10, 40]), 0, 255).astype(np.uint8)
    plain = to_tensor(np.stack([image.astype(np.uint8), bluer]), (0.5,) * 3, (0.5,) * 3, per_image=False)
    normed = to_tensor(np.stack([image.astype(np.uint8), bluer]), (0.5,) * 3, (0.5,) * 3, per_image=True)
    assert (normed[0] - normed[1]).abs().mean() < 0.2 * (plain[0] - plain[1]).abs().mean()


def test_zip_of_class_folders_is_a_source(tree, tmp_path):
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("deep/er/eosinophil/e1.png", _png("EOS"))
        handle.writestr("deep/er/MON/m1.png", _png("MON"))
    dataset = load_dataset([archive], tree, size=16)
    assert sorted(dataset.labels) == ["EOS", "MON"] and set(dataset.sources) == {"cells.zip"}


def test_a_zip_with_windows_separators_reads_its_class_folders(tree, tmp_path):
    """Windows PowerShell's Compress-Archive (5.1) names members ``NGS\\cell.png``: on Linux zipfile
    keeps the backslash, which must still separate the class folder from the file."""
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("lab\\eosinophil\\cell 1.png", _png("EOS"))
        handle.writestr("lab\\MON\\m1.png", _png("MON"))
    dataset = load_dataset([archive], tree, size=16)
    assert sorted(zip(dataset.labels, dataset.names, strict=True)) == [("EOS", "lab/eosinophil/cell 1.png"),
                                                          ("MON", "lab/MON/m1.png")]


def _png(code: str) -> bytes:
    from bloodcells.synthetic import encode

    return encode(cell_image(code, 0, 24))


def test_balancing_per_source_gives_a_few_lab_cells_the_weight_of_many_original_ones():
    import numpy as np

    from bloodcells.data import balanced_indices, per_source

    sources = ["pbc"] * 30 + ["lab"] * 3
    targets = {i: "NGS" if i % 2 else "LYT" for i in range(30)} | {30: "NGS", 31: "NGS", 32: "LYT"}
    order, repeats = balanced_indices(per_source(targets, sources), 8, np.random.default_rng(0))
    drawn = [(targets[i], sources[i]) for i in order]
    assert {key: drawn.count(key) for key in set(drawn)} == {("NGS", "pbc"): 8, ("NGS", "lab"): 8,
                                                           ("LYT", "pbc"): 8, ("LYT", "lab"): 8}
    assert repeats[[sources[i] == "lab" for i in order]].sum() == 16 - 3  # the lab's cells, oversampled
    order, _ = balanced_indices(targets, 8, np.random.default_rng(0))  # without: the lab's cells are rare
    assert sum(sources[i] == "lab" for i in order) < 8


def smear_cell(size: int = 96) -> np.ndarray:
    """A May-Grünwald-Giemsa-like cell image: a purple cell at the centre, pink red cells in the
    corners, a pale background."""
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3)) + (238, 222, 212)
    for cy, cx in ((14, 14), (14, size - 15), (size - 15, 20)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 9) ** 2] = (222, 150, 160)
    image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size // 6) ** 2] = (110, 60, 165)
    return image.astype(np.uint8)


def test_plain_background_keeps_the_cell_and_hides_its_surroundings():
    """The augmentation that makes a network look at the cell: the centred stained cell stays,
    the red cells around it become the plain background colour; an image without one centred
    cell (all purple, as a bone-marrow frame can be) is left as it is; the draw follows the seed."""
    import albumentations as A

    from bloodcells.background import PlainBackground, stained_cell_mask

    image = smear_cell()
    mask = stained_cell_mask(image)
    assert 0.05 < mask.mean() < 0.2 and mask[48, 48] and not mask[14, 14]
    out = A.Compose([PlainBackground(p=1)], seed=3)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out[40:56, 40:56].astype(int) - image[40:56, 40:56]).max() <= 1  # the cell as it was
    for corner in ((14, 14), (14, 81), (81, 20)):  # red cells gone: the background's colour instead
        assert np.abs(out[corner].astype(int) - (238, 222, 212)).max() < 15, out[corner]
    assert np.array_equal(out, A.Compose([PlainBackground(p=1)], seed=3)(image=image)["image"])

    purple = np.zeros_like(image) + np.array((110, 60, 165), np.uint8)
    assert np.array_equal(A.Compose([PlainBackground(p=1)], seed=3)(image=purple)["image"], purple)

    # a cell mask given with the image (training finds each once) is used as it is; none: unchanged
    given = np.zeros(image.shape[:2], np.uint8)
    given[:30, :30] = 1
    out = A.Compose([PlainBackground(p=1)], seed=3)(image=image, mask=given)["image"]
    assert np.array_equal(out[:20, :20], image[:20, :20]) and np.abs(out[48, 48].astype(int) - image[48, 48]).max() > 40
    unchanged = A.Compose([PlainBackground(p=1)], seed=3)(image=image, mask=np.zeros_like(given))["image"]
    assert np.array_equal(unchanged, image)


def test_cell_mask_on_a_crowded_lilac_bone_marrow_image():
    """Regression: on bone-marrow images (a lilac background, the cell filling much of the frame,
    neighbours touching it) the mask used to take the whole frame, so three images in four got no
    plain background and no cell focus. The centred cell is found and its touching neighbour and
    the background are left out."""
    from bloodcells.background import centred_cell_mask

    size = 144
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3)) + (205, 180, 225)  # lilac: blue over green by 45
    image[(yy - 72) ** 2 + (xx - 72) ** 2 < 40 ** 2] = (150, 120, 200)  # the cell's cytoplasm
    image[(yy - 72) ** 2 + (xx - 72) ** 2 < 24 ** 2] = (90, 40, 150)  # its nucleus
    image[(yy - 72) ** 2 + (xx - 140) ** 2 < 32 ** 2] = (95, 45, 155)  # a neighbour touching it
    mask = centred_cell_mask(image.astype(np.uint8))
    assert mask is not None
    assert mask[72, 72] and mask[72, 40] and mask[40, 72]  # nucleus and cytoplasm
    assert not mask[72, 136] and not mask[10, 10] and not mask[130, 20]  # neighbour, background
    assert 0.2 < mask.mean() < 0.45


def test_cell_mask_keeps_an_oblong_cell_whole():
    """Two peaks of one oblong cell (a band form, a monocyte) with no waist between them are one
    cell: only where the stain narrows, as between two touching cells, is the mask cut."""
    from bloodcells.background import centred_cell_mask

    size = 144
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3)) + (238, 222, 212)
    for cx in (57, 87):  # two round halves that overlap widely: two peaks, no waist
        image[(yy - 72) ** 2 + (xx - cx) ** 2 < 24 ** 2] = (110, 60, 165)
    mask = centred_cell_mask(image.astype(np.uint8))
    assert mask is not None and mask[72, 36] and mask[72, 108] and not mask[20, 72]


def test_plain_background_is_a_share_of_images():
    from bloodcells.data import augmentation
    from bloodcells.train import TrainConfig

    with pytest.raises(ValueError, match="plain_background is a share of images"):
        TrainConfig(plain_background=1.5)
    never, always = (augmentation(seed=0, plain_background=share) for share in (0.0, 1.0))
    assert "PlainBackground" not in repr(never) and "PlainBackground" in repr(always)


def test_an_unknown_folder_in_an_uploaded_zip_is_named_within_the_zip(tree, tmp_path):
    """The Training page saves an upload under a server folder: the message names the zip and its folder."""
    import zipfile

    from bloodcells.synthetic import cell_image, encode

    def zipped(name, members):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for member in members:
                archive.writestr(member, encode(cell_image("LYT", 0, 24)))
        return tmp_path / name

    with pytest.raises(UnknownLabelError) as caught:
        load_dataset([zipped("labelled.zip", ["foo/img0.png"])], tree, size=16)
    assert str(caught.value).startswith("labelled.zip: foo/img0.png: unknown cell type label 'foo'")
    assert str(tmp_path) not in str(caught.value)
    with pytest.raises(UnknownLabelError, match=r"^labelled\.zip: img0\.png is in no class folder, so its type "
                                                r"would be the zip's name: unknown cell type label 'labelled'"):
        load_dataset([zipped("labelled.zip", ["img0.png"])], tree, size=16)
