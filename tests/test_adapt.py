"""Adapting a trained tree to a new lab (``bloodcells.adapt``, ``bloodcells adapt``) on generated cells.

The base tree learns the generated cells as this project's sources show them; the "new lab"
shows the same cell types with rotated colours and a lower magnification
(``synthetic.other_lab``), which the base tree gets mostly wrong.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import pytest
from conftest import TINY_TREE_CELLS

from bloodcells.synthetic import other_lab, write_cell_folders

LAB_CELLS = 15  # per type, as a lab would label them on the Review page


@pytest.fixture
def base_tree(shared_trunk_models_dir):
    return shared_trunk_models_dir


@pytest.fixture(scope="module")
def lab_cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab") / "lab"
    write_cell_folders(root, {code: LAB_CELLS for code in TINY_TREE_CELLS}, size=32, start_seed=5000,
                       look=other_lab)
    return root


def folder_digest(folder):
    from bloodcells.store import sha256_file

    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def test_adapting_to_another_labs_look_raises_its_accuracy_and_keeps_the_original(base_tree, lab_cells, tmp_path):
    from bloodcells.adapt import AdaptConfig, adapt
    from bloodcells.classify import TreeClassifier

    base_files = folder_digest(base_tree)
    steps = []
    result = adapt(lab_cells, tmp_path / "adapted", models_dir=base_tree, config=AdaptConfig(hold_out=0.25),
                   progress=lambda done, total, text: steps.append((done, total)), log=lambda _text: None)

    lab_before, lab_after = result.before["lab"].tree, result.after["lab"].tree
    assert len(lab_after.truth) == result.held_out == LAB_CELLS * len(TINY_TREE_CELLS) // 4
    assert lab_before.accuracy <= 0.6, "the shift must fool the base tree, else the test proves nothing"
    assert lab_after.accuracy >= lab_before.accuracy + 0.25
    original_before, original_after = result.before["original"].tree, result.after["original"].tree
    assert original_after.accuracy >= original_before.accuracy - 0.1
    training = [(done, total) for done, total in steps if total is not None]
    assert training and all(0 < done <= total for done, total in training)
    assert (0, None) in steps  # a call (at which the app's Cancel acts) before training: scoring the base

    adapted = TreeClassifier.load(tmp_path / "adapted")  # a complete, verified tree folder
    manifest = json.loads((tmp_path / "adapted" / "classifier.json").read_text())
    base = TreeClassifier.load(base_tree)
    assert manifest["adapted"]["base"] == {"trunk": json.loads((base_tree / "trunk.json").read_text())["sha256"],
                                           **base.versions()}
    assert manifest["adapted"]["cells"] == sum(result.lab_counts.values()) == 45
    assert manifest["adapted"]["figures"]["after"]["lab"]["accuracy"] == pytest.approx(lab_after.accuracy, abs=1e-4)
    assert set(adapted.versions().values()).isdisjoint(base.versions().values())
    split = json.loads((tmp_path / "adapted" / "split.json").read_text())
    base_split = json.loads((base_tree / "split.json").read_text())
    assert set(base_split["seen"]) <= set(split["seen"])  # the cells the base trunk learnt stay "seen"
    assert set(base_split["test"]) <= set(split["test"])
    assert folder_digest(base_tree) == base_files  # the tree it started from is untouched


def test_heads_only_adaptation_keeps_the_trunk(base_tree, lab_cells, tmp_path):
    from bloodcells.adapt import AdaptConfig, adapt

    adapt(lab_cells, tmp_path / "heads", models_dir=base_tree, config=AdaptConfig(epochs=0), log=lambda _text: None)
    assert (json.loads((tmp_path / "heads" / "trunk.json").read_text())["sha256"]
            == json.loads((base_tree / "trunk.json").read_text())["sha256"])


def test_an_image_given_twice_is_learnt_or_held_back_once(base_tree, lab_cells, tmp_path):
    """The same cell exported twice must not be both learnt and scored: that would inflate "after"."""
    from bloodcells.adapt import AdaptConfig, adapt

    lab = tmp_path / "lab"
    shutil.copytree(lab_cells, lab)
    for file in list((lab / "LYT").iterdir()):
        shutil.copy(file, file.with_name(f"again-{file.name}"))
    lines = []
    result = adapt(lab, tmp_path / "heads", models_dir=base_tree, config=AdaptConfig(epochs=0), log=lines.append)
    assert sum(result.lab_counts.values()) + result.held_out == LAB_CELLS * len(TINY_TREE_CELLS)
    assert result.lab_counts["LYT"] + result.before["lab"].tree.truth.count("LYT") == LAB_CELLS
    assert f"{LAB_CELLS} duplicate images read once" in lines


def test_reviewed_cells_of_two_analyses_of_one_zip_count_once_with_the_latest_label(store):
    from bloodcells.adapt import reviewed_cells_zip
    from bloodcells.store import PredictionRow
    from bloodcells.synthetic import cell_image, encode

    images = {name: encode(cell_image(code, n, 32)) for n, (name, code) in enumerate([("a.png", "LYT"),
                                                                                      ("b.png", "MON")])}
    analyses = []
    for label_of_a in ("LYT", "MON"):  # the second review corrects the first
        analysis_id = store.start_analysis("cells.zip", "classification", {"ALL": "abc"})
        store.finish_analysis(analysis_id, predictions=[PredictionRow(name, "LYT", "x", 0.9, {}, False, content)
                                                        for name, content in images.items()])
        for prediction in store.get_analysis(analysis_id).predictions:
            store.review(prediction.id, label_of_a if prediction.filename == "a.png" else "MON", "dr.lab")
        analyses.append(analysis_id)
    content, counts = reviewed_cells_zip(store, list(reversed(analyses)))
    assert counts == {"MON": 2}
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert sorted(archive.namelist()) == ["MON/MON_00000_a.png", "MON/MON_00001_b.png"]


def test_fine_tuning_starts_from_a_linear_probe(base_tree, lab_cells, tmp_path):
    """With the linear probe, the trunk's classifier fits its features before the first step: at a
    learning rate of 0 (nothing moves) the first epoch already classifies the training mix; without
    it, the new classifier is random and so is that epoch."""
    from bloodcells.adapt import AdaptConfig, adapt

    first_epoch = {}
    for probe in (True, False):
        out = tmp_path / f"probe-{probe}"
        adapt(lab_cells, out, models_dir=base_tree, log=lambda _text: None,
              config=AdaptConfig(epochs=1, learning_rate=0.0, linear_probe=probe))
        first_epoch[probe] = json.loads((out / "trunk.json").read_text())["metrics"]["history"][0]["train_accuracy"]
    assert first_epoch[True] >= 0.6
    assert first_epoch[True] >= first_epoch[False] + 0.1  # same seed: the same random classifier each run


def test_layer_decay_keeps_the_trunks_early_layers_near_their_trained_weights(base_tree, lab_cells, tmp_path):
    """With a layer decay the stem (the lowest layer) learns at a small fraction of the rate of the
    trunk's top: it moves far less than it does with one rate for all, while the top still moves
    (timm's layer groups for EfficientNet: stem, each block, the head convolution, the classifier)."""
    from bloodcells.adapt import AdaptConfig, adapt
    from bloodcells.classify import read_verified

    def moved(state, name):
        return float((state[name].float() - base[name].float()).norm() / base[name].float().norm())

    base = read_verified(base_tree / "trunk.json")[2]
    change = {}
    for decay in (1.0, 0.3):
        out = tmp_path / f"decay-{decay}"
        adapt(lab_cells, out, models_dir=base_tree, log=lambda _text: None,
              config=AdaptConfig(epochs=2, layer_decay=decay))
        state = read_verified(out / "trunk.json")[2]
        change[decay] = {layer: moved(state, f"{layer}.weight") for layer in ("conv_stem", "conv_head")}
    assert change[1.0]["conv_stem"] > 0, "the trunk must move at all, else the test proves nothing"
    assert change[0.3]["conv_stem"] < 0.05 * change[1.0]["conv_stem"]
    # the top still learns: the stem's move against the top's shrinks by far more than the top's own
    ratio = {decay: moved["conv_stem"] / moved["conv_head"] for decay, moved in change.items()}
    assert change[0.3]["conv_head"] > 0 and ratio[0.3] < 0.05 * ratio[1.0]


def test_a_coarse_label_adapts_the_nodes_above_it(base_tree, lab_cells, tmp_path):
    """``Neutrophil/`` (NEU, above band and segmented) next to exact types: accepted, scored as right
    when the answer lies below it."""
    from bloodcells.adapt import AdaptConfig, adapt

    lab = tmp_path / "lab"
    shutil.copytree(lab_cells, lab)
    (lab / "Neutrophil").mkdir()
    for n, file in enumerate(sorted((lab / "NGB").iterdir()) + sorted((lab / "NGS").iterdir())):
        file.rename(lab / "Neutrophil" / f"img{n}.png")  # a file-name prefix such as NGB_ would be finer
    (lab / "NGB").rmdir()
    (lab / "NGS").rmdir()
    result = adapt(lab, tmp_path / "adapted", models_dir=base_tree, config=AdaptConfig(epochs=2),
                   log=lambda _text: None)
    assert result.lab_counts.keys() == {"LYT", "EOS", "NEU"}
    assert "NEU" in result.after["lab"].tree.per_class


def test_cli_adapts_a_review_export_zip_and_the_result_classifies(base_tree, lab_cells, tmp_path, capsys):
    from bloodcells.cli import main

    export = tmp_path / "labels-analysis-7.zip"  # the Review page's export: class folders in a zip
    with zipfile.ZipFile(export, "w") as archive:
        for file in sorted(lab_cells.rglob("*.png")):
            archive.write(file, f"{file.parent.name}/{file.name}")
    assert main(["adapt", "--data", str(export), "--out", str(tmp_path / "adapted"), "--models", str(base_tree),
                 "--hold-out", "0.2", "--epochs", "3", "--linear-probe"]) == 0
    out = capsys.readouterr().out
    assert out.index("[trunk] linear probe") < out.index("[trunk] epoch 1/3")
    assert "lab's held-back cells, before: accuracy" in out and "lab's held-back cells, after: accuracy" in out
    assert "original sources' test split, after" in out
    adapted = tmp_path / "adapted"  # where it wrote, and how it comes into use: it said nothing of either
    assert out.rstrip().endswith(f"written {adapted}: `bloodcells versions promote {adapted}` puts it in use "
                                 f"(`--models {adapted}` tries it first)")
    assert main(["classify", str(lab_cells), "--models", str(tmp_path / "adapted"), "--no-store",
                 "--out", str(tmp_path / "out.csv")]) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + LAB_CELLS * len(TINY_TREE_CELLS)


@pytest.mark.parametrize("problem, message", [
    ("few", "too few cells to adapt on: EOS has 2"),
    ("unknown", "not-a-cell"),
    ("empty", "holds no images"),
    ("same-folder", "new folder"),
    ("no-trunk", "shared trunk"),
    ("no-replay", "--replay"),
    ("hold-out", "--hold-out must be"),
    ("hold-out-all", "leaving fewer than one of each of the 4 cell types to learn from"),  # was sklearn's ValueError
    ("layer-decay", "--layer-decay must be"),
    ("one-image-two-labels", "are the same image with different labels"),
])
def test_bad_input_is_a_clear_error_and_nothing_is_written(problem, message, base_tree, lab_cells, tmp_path,
                                                          trained_models_dir, capsys):
    from bloodcells.cli import main

    lab, models, out = tmp_path / "lab", tmp_path / "base", tmp_path / "adapted"
    shutil.copytree(lab_cells, lab)
    shutil.copytree(base_tree, models)
    extra = []
    if problem == "few":
        for file in sorted((lab / "EOS").iterdir())[2:]:
            file.unlink()
    elif problem == "unknown":
        (lab / "not-a-cell").mkdir()
        for n, file in enumerate(sorted((lab / "LYT").iterdir())):
            file.rename(lab / "not-a-cell" / f"img{n}.png")  # no prefix to fall back on
    elif problem == "empty":
        lab = tmp_path / "empty.zip"
        with zipfile.ZipFile(lab, "w") as archive:
            archive.writestr("notes.txt", "no images here")
    elif problem == "same-folder":
        out = models
    elif problem == "no-trunk":
        shutil.rmtree(models)
        shutil.copytree(trained_models_dir, models)
    elif problem == "no-replay":
        manifest = json.loads((models / "classifier.json").read_text())
        manifest["sources"] = [str(tmp_path / "gone")]
        (models / "classifier.json").write_text(json.dumps(manifest))
    elif problem == "hold-out":
        extra = ["--hold-out", "1.5"]
    elif problem == "hold-out-all":
        extra = ["--hold-out", "0.99"]
    elif problem == "layer-decay":
        extra = ["--layer-decay", "0"]
    elif problem == "one-image-two-labels":
        shutil.copy(sorted((lab / "LYT").iterdir())[0], lab / "EOS" / "also-this.png")
    before = folder_digest(models)
    assert main(["adapt", "--data", str(lab), "--out", str(out), "--models", str(models), *extra]) == 2
    assert message in capsys.readouterr().err
    assert folder_digest(models) == before
    assert not (tmp_path / "adapted").exists() and not (tmp_path / "adapted.training").exists()


def test_cancel_stops_before_anything_is_written(base_tree, lab_cells, tmp_path):
    """Cancel acted only once training had begun: the app said "cancelled" while the server read and
    scored cells for minutes more."""
    from bloodcells.adapt import AdaptCancelled, adapt

    logged = []
    with pytest.raises(AdaptCancelled):
        adapt(lab_cells, tmp_path / "adapted", models_dir=base_tree, should_stop=lambda: True, log=logged.append)
    assert not (tmp_path / "adapted").exists() and not (tmp_path / "adapted.training").exists()
    assert not any(line.startswith("[") for line in logged), logged  # stopped before training ("[trunk] ...") began


def test_a_folder_that_cannot_take_the_tree_is_refused_before_any_cell_is_read(base_tree, lab_cells, tmp_path):
    """`adapt --out` a folder of images was refused only after a minute of reading and scoring cells."""
    from bloodcells.adapt import adapt
    from bloodcells.inputs import InputError

    logged = []
    with pytest.raises(InputError, match="holds files that are not a trained tree"):
        adapt(lab_cells, lab_cells, models_dir=base_tree, log=logged.append)
    assert logged == []


def test_without_the_original_sources_adapting_needs_replay_switched_off(base_tree, lab_cells, tmp_path, capsys):
    """A lab's server may not hold the original training cells: asked for, adaptation then learns the
    lab's cells alone and says that the original sources were neither replayed nor scored."""
    from bloodcells.cli import main

    models = tmp_path / "base"
    shutil.copytree(base_tree, models)
    manifest = json.loads((models / "classifier.json").read_text())
    manifest["sources"] = [str(tmp_path / "gone")]
    (models / "classifier.json").write_text(json.dumps(manifest))
    assert main(["adapt", "--data", str(lab_cells), "--out", str(tmp_path / "adapted"), "--models", str(models),
                 "--replay-per-label", "0", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "not replayed nor scored" in out and "lab's held-back cells, after" in out
    assert "original sources' test split" not in out


def test_a_tree_trained_from_a_relative_folder_finds_it_from_any_working_directory(tmp_path, monkeypatch):
    """``train --data cells`` once recorded "cells" as given: adapting that tree from another working
    directory (the app's, or a later shell's) then said the original cells were not there."""
    from conftest import tiny_train_config

    from bloodcells.adapt import replay_unavailable
    from bloodcells.settings import recorded_folder
    from bloodcells.train import train_tree

    write_cell_folders(tmp_path / "work" / "cells", {"LYT": 6, "EOS": 6}, size=32)
    monkeypatch.chdir(tmp_path / "work")
    train_tree(["cells"], "models", config=tiny_train_config(epochs=1), log=lambda _text: None)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    recorded = json.loads((tmp_path / "work" / "models" / "classifier.json").read_text())["sources"]
    assert [recorded_folder(s) for s in recorded] == [(tmp_path / "work" / "cells").resolve()]
    assert replay_unavailable(tmp_path / "work" / "models") is None
    shutil.rmtree(tmp_path / "work" / "cells")
    assert str((tmp_path / "work" / "cells").resolve()) in replay_unavailable(tmp_path / "work" / "models")
