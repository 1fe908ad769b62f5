"""Versions of the classifier tree: promotion verifies before it switches, the pointer always names a
complete tree, rollback returns to the one in use before, and the shipped folder serves without one."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bloodcells import versions
from bloodcells.classify import ModelFileError, TreeClassifier, default_models_dir

TREE = "default"


@pytest.fixture
def models(trained_models_dir, tmp_path, monkeypatch) -> Path:
    """A models folder whose shipped tree is a copy of the tiny trained one."""
    root = tmp_path / "models"
    shutil.copytree(trained_models_dir, root / "classifier" / TREE)
    monkeypatch.setenv("BLOODCELLS_MODELS_DIR", str(root))
    return root


def candidate(trained_models_dir, tmp_path, name: str) -> Path:
    """A trained tree apart from the models (as the Training page makes one), its files unlike any other's."""
    folder = tmp_path / "training" / name
    shutil.copytree(trained_models_dir, folder)
    manifest = json.loads((folder / "classifier.json").read_text())
    manifest["trained_at"] = name
    (folder / "classifier.json").write_text(json.dumps(manifest))
    return folder


def pointer(models: Path) -> Path:
    return models / "classifier" / f"{TREE}.current"


def test_the_shipped_folder_is_used_without_a_pointer(models):
    assert not pointer(models).exists()
    assert versions.current_version(TREE) is None and versions.list_versions(TREE) == []
    assert default_models_dir() == models / "classifier" / TREE
    assert TreeClassifier.load().models_dir == models / "classifier" / TREE


def test_accepted_trees_live_apart_from_the_shipped_models_and_outlive_their_replacement(
        models, trained_models_dir, tmp_path, monkeypatch):
    """In the container the shipped models are the image's: an upgrade replaced them, with the versions
    accepted since and the pointer to the one in use, and every page went back to the shipped tree while
    the database said "accepted". BLOODCELLS_VERSIONS_DIR (the image's is in its data volume) keeps them."""
    state = tmp_path / "data" / "classifier"
    monkeypatch.setenv("BLOODCELLS_VERSIONS_DIR", str(state))
    folder = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    assert folder.parent == state / "versions" and (state / f"{TREE}.current").is_file()
    assert not (models / "classifier" / "versions").exists() and not pointer(models).exists()
    shutil.rmtree(models)  # the upgrade: a new image, its own shipped models
    shutil.copytree(trained_models_dir, models / "classifier" / TREE)
    assert versions.current_version(TREE) == folder.name and default_models_dir() == folder
    assert TreeClassifier.load().manifest["trained_at"] == "run-1"
    assert versions.version_of(folder) == folder.name and versions.folder_of(TREE, folder.name) == folder
    assert versions.rollback(TREE, by="ana") == models / "classifier" / TREE


def test_promotion_puts_a_verified_copy_in_use(models, trained_models_dir, tmp_path):
    new = candidate(trained_models_dir, tmp_path, "run-1")
    folder = versions.promote(new, TREE, by="ana")
    assert folder.parent == models / "classifier" / "versions"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", folder.name)  # UTC time of promotion, files' sha256
    assert versions.current_version(TREE) == folder.name and versions.list_versions(TREE) == [folder.name]
    assert default_models_dir() == folder
    assert TreeClassifier.load().manifest["trained_at"] == "run-1"
    assert new.is_dir() and (models / "classifier" / TREE / "classifier.json").is_file()  # both untouched
    assert not list(folder.parent.glob(".*"))  # nothing left half-copied


@pytest.mark.parametrize("damage", ["weights", "manifest", "other tree"])
def test_a_candidate_that_fails_to_load_leaves_the_tree_in_use(models, trained_models_dir, tmp_path, damage):
    in_use = versions.promote(candidate(trained_models_dir, tmp_path, "good"), TREE, by="ana")
    before = pointer(models).read_bytes()
    broken = candidate(trained_models_dir, tmp_path, "broken")
    tree_name = TREE
    if damage == "weights":
        weights = sorted(broken.glob("*.safetensors"))[0]
        content = bytearray(weights.read_bytes())
        content[len(content) // 2] ^= 0xFF
        weights.write_bytes(bytes(content))
    elif damage == "manifest":
        (broken / "classifier.json").write_text("{ not json")
    else:
        tree_name = "marrow"  # a tree of another name must not take this one's place
    with pytest.raises(ModelFileError):
        versions.promote(broken, tree_name, by="ana")
    assert pointer(models).read_bytes() == before and default_models_dir() == in_use
    assert versions.list_versions(TREE) == [in_use.name]
    assert not list(in_use.parent.glob(".*"))  # the rejected copy is gone


def test_rollback_returns_to_the_tree_in_use_before(models, trained_models_dir, tmp_path):
    shipped = default_models_dir()
    first = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    second = versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by="ana")
    assert versions.list_versions(TREE) == sorted([first.name, second.name])
    assert versions.rollback(TREE, by="ana") == first and default_models_dir() == first
    assert TreeClassifier.load().manifest["trained_at"] == "run-1"
    assert versions.rollback(TREE, by="ana") == shipped and versions.current_version(TREE) is None
    with pytest.raises(ValueError, match="no earlier version"):
        versions.rollback(TREE, by="ana")
    assert versions.list_versions(TREE) == sorted([first.name, second.name])  # every version stays available


def test_every_switch_is_logged_with_who_and_when_and_a_switch_needs_a_name(models, trained_models_dir, tmp_path):
    """Switches and rollbacks recorded no one: a lab could not tell who changed the models every analysis used."""
    first = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    versions.use_version(TREE, None, by=" bo ")
    versions.use_version(TREE, None, by="bo")  # already in use: nothing switched, nothing logged
    versions.rollback(TREE, by="cy")
    log = versions.switch_log(TREE)
    assert [(s["action"], s["version"], s["by"]) for s in log] == [
        ("rollback", first.name, "cy"), ("use", None, "bo"), ("promote", first.name, "ana")]
    assert all(s["at"].tzinfo is not None and abs(s["at"] - datetime.now(UTC)) < timedelta(minutes=5) for s in log)
    for switch in (lambda: versions.rollback(TREE, by=" "), lambda: versions.use_version(TREE, None, by=""),
                   lambda: versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by=None)):
        with pytest.raises(ValueError, match="say who is switching"):
            switch()
    assert versions.current_version(TREE) == first.name and versions.list_versions(TREE) == [first.name]
    pointer = models / "classifier" / f"{TREE}.current"  # written before switches were logged: still read
    pointer.write_text(json.dumps({"version": first.name, "history": [None]}))
    assert versions.switch_log(TREE) == [] and versions.rollback(TREE, by="di") == default_models_dir()
    assert [(s["action"], s["by"]) for s in versions.switch_log(TREE)] == [("rollback", "di")]


def test_rollback_passes_over_versions_removed_from_disk(models, trained_models_dir, tmp_path):
    """A version folder deleted by hand must not make rollback fail on every click."""
    shipped = default_models_dir()
    first = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    second = versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by="ana")
    versions.promote(candidate(trained_models_dir, tmp_path, "run-3"), TREE, by="ana")
    shutil.rmtree(second)  # by an administrator cleaning up
    assert versions.rollback(TREE, by="ana") == first and versions.current_version(TREE) == first.name
    assert versions.rollback(TREE, by="ana") == shipped


def test_the_same_files_promoted_again_are_the_same_version(models, trained_models_dir, tmp_path, monkeypatch):
    """Accept clicked twice, or a folder promoted anew later, must not make a second copy of one tree."""
    run = candidate(trained_models_dir, tmp_path, "run-1")
    first = versions.promote(run, TREE, by="ana")
    later = versions.time.gmtime(versions.time.time() + 3600)
    monkeypatch.setattr(versions.time, "gmtime", lambda *_: later)
    assert versions.promote(run, TREE, by="ana") == first
    assert versions.list_versions(TREE) == [first.name]
    other = versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by="ana")
    assert versions.promote(run, TREE, by="ana") == first and versions.current_version(TREE) == first.name
    assert versions.list_versions(TREE) == sorted([first.name, other.name])
    assert versions.rollback(TREE, by="ana") == other and versions.rollback(TREE, by="ana") == first


def test_use_version_switches_to_a_listed_version_and_back(models, trained_models_dir, tmp_path):
    first = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    second = versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by="ana")
    assert versions.use_version(TREE, first.name, by="ana") == first and default_models_dir() == first
    with pytest.raises(ValueError, match="no version 'nonsense'"):
        versions.use_version(TREE, "nonsense", by="ana")
    assert default_models_dir() == first
    assert versions.use_version(TREE, None, by="ana") == models / "classifier" / TREE
    assert versions.rollback(TREE, by="ana") == first and versions.rollback(TREE, by="ana") == second


def test_a_version_damaged_after_promotion_is_not_switched_to(models, trained_models_dir, tmp_path):
    first = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    second = versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by="ana")
    sorted(first.glob("*.safetensors"))[0].unlink()
    with pytest.raises(ModelFileError):
        versions.rollback(TREE, by="ana")
    assert default_models_dir() == second


def test_the_pointer_always_names_a_complete_tree_while_promoting(models, trained_models_dir, tmp_path):
    candidates = [candidate(trained_models_dir, tmp_path, f"run-{n}") for n in range(4)]
    reads, incomplete, done = [], [], threading.Event()

    def read_while_promoting():
        while not done.is_set():
            try:
                folder = default_models_dir()
                manifest = json.loads((folder / "classifier.json").read_text())
                missing = [code for code in manifest["nodes"] if not (folder / f"{code}.json").is_file()]
            except (OSError, ValueError) as error:  # no folder, or a file read half-written
                incomplete.append(error)
                continue
            reads.append(folder)
            if missing:
                incomplete.append((folder, missing))

    reader = threading.Thread(target=read_while_promoting)
    reader.start()
    try:
        for new in candidates:
            versions.promote(new, TREE, by="ana")
        versions.rollback(TREE, by="ana")
    finally:
        done.set()
        reader.join()
    assert incomplete == [] and len(set(reads)) > 1  # it read while the tree in use changed


def test_promotion_registers_the_models_in_the_store(models, trained_models_dir, tmp_path, store):
    folder = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, store=store, by="ana")
    registered = store.list_models(kind="classifier")
    nodes = json.loads((folder / "classifier.json").read_text())["nodes"]
    assert {m.node_code for m in registered} == set(nodes)
    assert all(Path(m.weights_path).parent == folder for m in registered)


def _recorded_candidate(store, folder: Path) -> int:
    return store.record_model_version(tree=TREE, kind="trained", folder=str(folder), base={}, cells=3,
                                      analyses=[], figures={}, started_by="ana")


def test_a_candidate_discarded_while_it_is_accepted_is_not_put_in_use(models, trained_models_dir, tmp_path, store,
                                                                       monkeypatch):
    """Accept switched the models first and recorded the decision after: a colleague's Discard in between left
    the new tree in use under a record saying "discarded" (and Accept said it failed)."""
    from bloodcells.store import ReviewError

    row_id = _recorded_candidate(store, candidate(trained_models_dir, tmp_path, "run-1"))
    stored_version = versions._stored_version

    def discarded_meanwhile(*args, **kwargs):  # the copy is made when a colleague clicks Discard
        found = stored_version(*args, **kwargs)
        store.decide_model_version(row_id, "discarded", "bo")
        return found

    monkeypatch.setattr(versions, "_stored_version", discarded_meanwhile)
    with pytest.raises(ReviewError, match="already discarded by bo"):
        versions.accept_candidate(store, row_id, "ana")
    assert versions.current_version(TREE) is None and versions.switch_log(TREE) == []
    assert versions.list_versions(TREE) == []  # its copy, never in use, is not offered under Versions
    assert store.get_model_version(row_id).status == "discarded"


def test_an_accepted_candidate_whose_switch_fails_says_how_to_put_it_in_use(models, trained_models_dir, tmp_path,
                                                                             store, monkeypatch):
    """Recorded as accepted before the switch: a switch that failed left a decision Accept could not retry."""
    row_id = _recorded_candidate(store, candidate(trained_models_dir, tmp_path, "run-1"))
    switch = versions._switch

    def pointer_not_written(*_args):
        raise PermissionError("models/classifier/default.current: permission denied")

    monkeypatch.setattr(versions, "_switch", pointer_not_written)
    with pytest.raises(versions.VersionError, match=r"recorded as accepted as version .*, but it could not be put in "
                                                    r"use \(.*permission denied\): put it in use under Versions"):
        versions.accept_candidate(store, row_id, "ana")
    accepted = store.get_model_version(row_id)
    assert accepted.status == "accepted" and accepted.version in versions.list_versions(TREE)
    monkeypatch.setattr(versions, "_switch", switch)
    assert versions.use_version(TREE, accepted.version, by="ana").name == versions.current_version(TREE)


def test_a_name_the_store_refuses_switches_nothing(models, trained_models_dir, tmp_path, store):
    """A name without a letter or digit switched the models, then the store refused to record who accepted them
    (the record stayed "candidate" with the tree in use)."""
    row_id = _recorded_candidate(store, candidate(trained_models_dir, tmp_path, "run-1"))
    other = candidate(trained_models_dir, tmp_path, "run-2")
    for name in ("—", "🙂", "dr\tx"):
        with pytest.raises(versions.VersionError, match="name of the person making"):
            versions.accept_candidate(store, row_id, name)
        with pytest.raises(versions.VersionError, match="name of the person making"):
            versions.promote(other, TREE, by=name)
    assert versions.current_version(TREE) is None and versions.list_versions(TREE) == []
    assert store.get_model_version(row_id).status == "candidate"
    assert versions.accept_candidate(store, row_id, "ana").name == versions.current_version(TREE)


def test_an_unreadable_pointer_is_named(models):
    pointer(models).write_text("not json")
    with pytest.raises(ModelFileError, match=r"default\.current: unreadable"):
        default_models_dir()


def test_an_unreadable_pointer_is_one_message_on_the_training_page(models, app_store):
    """The Versions section was a ModelFileError traceback (the CLI said which file)."""
    from test_app_adapt import training_page

    pointer(models).write_text("not json")
    for task in ("versions", "adapt to this lab"):
        at = training_page(task)
        assert not at.exception, task
        [error] = [e.value for e in at.error]
        assert error.startswith(f"{pointer(models)}: unreadable (") and "delete it to use" in error, task
    at.segmented_control(key="training_task").set_value("train a new tree").run()
    assert not at.exception and not at.error and at.file_uploader(key="training_upload")


def test_each_analysis_records_the_tree_version_that_made_it(models, trained_models_dir, tmp_path, store):
    from bloodcells.classify import classify
    from bloodcells.report import analysis_overview
    from bloodcells.synthetic import write_cell_zip

    upload = write_cell_zip(tmp_path / "cells.zip", {"LYT": 2, "NGS": 2}, size=32)
    first = classify(upload, classifier=TreeClassifier.load(), store=store).analysis_id
    promoted = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    second = classify(upload, classifier=TreeClassifier.load(), store=store).analysis_id
    assert versions.version_of(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
    recorded = {a: store.get_analysis(a).model_versions["tree version"] for a in (first, second)}
    assert recorded == {first: "shipped", second: promoted.name}
    shown = {row["id"]: row["models"] for row in analysis_overview(store)}
    assert shown[second].startswith(f"tree version {promoted.name}, ")  # the id whole, node sha256s shortened


def test_candidate_folders_are_unique_within_a_second(models):
    assert versions.candidate_dir() != versions.candidate_dir()  # two people pressing Train at once


def test_two_trees_accepted_at_once_both_stay_in_the_history(models, trained_models_dir, tmp_path, monkeypatch):
    """Both read the pointer before either wrote it: the first version accepted dropped out of the
    history, and rolling back skipped it."""
    shipped = default_models_dir()
    first_read, write = threading.Event(), versions._write_pointer

    def slow_write(tree_name, state):  # the first writer holds on between reading and writing
        if threading.current_thread().name == "first":
            first_read.set()
            threading.Event().wait(0.5)
        write(tree_name, state)

    monkeypatch.setattr(versions, "_write_pointer", slow_write)
    first = threading.Thread(target=versions.promote, args=(candidate(trained_models_dir, tmp_path, "run-1"), TREE),
                             kwargs={"by": "bo"}, name="first")
    first.start()
    assert first_read.wait(60)
    second = versions.promote(candidate(trained_models_dir, tmp_path, "run-2"), TREE, by="ana")
    first.join(60)
    assert versions.current_version(TREE) == second.name
    [first_version] = set(versions.list_versions(TREE)) - {second.name}
    assert versions.rollback(TREE, by="ana").name == first_version and versions.rollback(TREE, by="ana") == shipped


def test_two_writers_registering_one_new_architecture_at_once_both_succeed(store):
    """The second failed with "Duplicate entry ... for key 'architecture'", and its Accept with it."""
    from sqlalchemy import event

    from bloodcells.store import ModelType

    paused, done = threading.Event(), {}

    def pause(_conn, _cursor, statement, *_):
        if "FROM model_types" in statement and threading.current_thread().name == "first" and not paused.is_set():
            paused.set()
            threading.Event().wait(0.5)

    event.listen(store.engine, "after_cursor_execute", pause)

    def register(sha: str) -> int:
        return store.register_model(kind="classifier", architecture="efficientnet_lite0", weights_path=f"{sha}.pt",
                                    sha256=sha * 64, metrics={}, tree=TREE, node_code=sha)

    first = threading.Thread(target=lambda: done.update(first=register("a")), name="first")
    first.start()
    assert paused.wait(30)
    second = register("b")
    first.join(30)
    assert done["first"] != second and store.count_rows(ModelType) == 1


def test_the_command_line_lists_promotes_switches_and_rolls_back(models, trained_models_dir, tmp_path, monkeypatch,
                                                                   capsys):
    """The docs said to train into a new folder "and promote it": the CLI had no way to."""
    from bloodcells.cli import main
    from bloodcells.store import open_store

    monkeypatch.setenv("BLOODCELLS_DATA_DIR", str(tmp_path / "data"))
    assert main(["versions", "log"]) == 0  # it printed nothing
    assert capsys.readouterr().out.startswith("no switch of tree 'default' logged yet")
    new = candidate(trained_models_dir, tmp_path, "run-cli")
    assert main(["versions", "promote", str(new)]) == 0
    [version] = versions.list_versions(TREE)
    assert f"{version} is in use for tree 'default'" in capsys.readouterr().out
    assert TreeClassifier.load().manifest["trained_at"] == "run-cli" and new.is_dir()
    assert {m.sha256 for m in open_store().list_models(kind="classifier")}  # registered, as the app's Accept does
    assert main(["versions", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["  shipped", f"* {version}"]
    assert main(["versions", "use", "shipped"]) == 0 and versions.current_version(TREE) is None
    assert main(["versions", "rollback"]) == 0 and versions.current_version(TREE) == version
    assert f"rolled back: {version} is in use" in capsys.readouterr().out
    assert main(["versions", "use", "shipped", "--by", "dr.lab"]) == 0 and capsys.readouterr()
    assert main(["versions", "log"]) == 0
    logged = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [line[3:] for line in logged] == [["use", "shipped", "by", "dr.lab"],
                                            ["rollback", version, "by", getpass.getuser()],
                                            ["use", "shipped", "by", getpass.getuser()],
                                            ["promote", version, "by", getpass.getuser()]]
    assert main(["versions", "rollback", "--by", " "]) == 2 and "--by NAME" in capsys.readouterr().err
    for arguments, message in ((["use", "20000101T000000Z-deadbeef"], "has no version '20000101T000000Z-deadbeef'"),
                               (["promote", str(tmp_path / "data")], "not a trained tree's folder"),
                               (["promote", str(models)], "not a trained tree's folder"),
                               (["promote"], "needs a FOLDER"), (["list", "extra"], "takes no 'extra'"),
                               (["list", "--tree", "nosuch"], "no tree 'nosuch' in ")):
        assert main(["versions", *arguments]) == 2
        assert message in capsys.readouterr().err, arguments
    assert versions.current_version(TREE) is None  # as put last: nothing a refused command did changed it


def test_a_folder_holding_the_versions_is_refused_before_anything_is_copied(models, trained_models_dir):
    """A tree folder that holds the models folder (trained beside its own output, say): copying it into
    versions/ copied the copy, until the disk filled or shutil gave up with a wall of paths."""
    shutil.copytree(trained_models_dir, models, dirs_exist_ok=True)  # models/ itself looks like a tree now
    with pytest.raises(ModelFileError, match="holds the versions folder"):
        versions.promote(models, TREE, by="ana")
    assert not (models / "classifier" / "versions").exists()


def test_a_promoted_version_is_never_trained_over_and_a_broken_tree_is_named_as_given(models, trained_models_dir,
                                                                                      tmp_path):
    """`train --out models/classifier/versions/<id in use>` replaced the version analyses name; a tree missing
    a file was said of a hidden copy (versions/.incoming-...) that was gone by then."""
    from bloodcells.inputs import InputError
    from bloodcells.synthetic import write_cell_folders
    from bloodcells.train import TrainConfig, train_tree

    folder = versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    weights = {path.name: path.read_bytes() for path in folder.iterdir()}
    write_cell_folders(tmp_path / "cells", {"LYT": 8, "MON": 8}, size=24)
    with pytest.raises(InputError, match="a promoted version of the tree, which is never changed"):
        train_tree([tmp_path / "cells"], folder, config=TrainConfig(architecture="test_efficientnet", input_size=24,
                                                                     epochs=1, min_per_class=4))
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == weights
    broken = candidate(trained_models_dir, tmp_path, "broken")
    next(broken.glob("*.safetensors")).unlink()
    with pytest.raises(ModelFileError, match=re.escape(str(broken))) as raised:
        versions.promote(broken, TREE, by="ana")
    assert ".incoming-" not in str(raised.value)
    assert versions.current_version(TREE) == folder.name


def test_the_versions_section_says_why_its_buttons_wait_for_a_name(models, trained_models_dir, tmp_path, app_store):
    """Use and Roll back were greyed out with no reason given when the sidebar had no name."""
    from test_app_adapt import training_page

    versions.promote(candidate(trained_models_dir, tmp_path, "run-1"), TREE, by="ana")
    at = training_page("versions")
    assert not any("Enter your name in the sidebar" in c.value for c in at.caption)
    at.sidebar.text_input[0].input("").run()
    assert not at.exception and at.button(key="rollback").disabled
    assert any("Enter your name in the sidebar to accept, discard, switch or roll back" in c.value for c in at.caption)


def test_a_name_the_store_would_refuse_is_said_in_the_sidebar_and_enables_nothing(models, trained_models_dir,
                                                                                   tmp_path, app_store):
    """A sidebar name of "—" enabled Train, Adapt and Accept, and was refused only when recorded: after an hour
    of training (its tree lost), or after the models in use had been switched."""
    from test_app_adapt import training_page

    row_id = _recorded_candidate(app_store, candidate(trained_models_dir, tmp_path, "run-1"))
    at = training_page("versions")
    assert not at.button(key=f"accept_{row_id}").disabled and not at.sidebar.error
    at.sidebar.text_input[0].input("—").run()
    assert not at.exception and at.button(key=f"accept_{row_id}").disabled
    assert [e.value for e in at.sidebar.error] == [
        "A review or sign-off needs the name of the person making it (with a letter or digit)."]
    assert any("Enter your name in the sidebar" in c.value for c in at.caption)
    assert at.session_state["reviewer"] == ""  # the sign-off panel goes by it: Sign off stayed enabled
    at.sidebar.text_input[0].input("Dr Ana").run()  # put right at once: it was dropped (the field was a new widget)
    assert not at.button(key=f"accept_{row_id}").disabled and not at.sidebar.error
    assert at.session_state["reviewer"] == "Dr Ana"
    at.switch_page("pages/4_Review.py").run()  # the name goes with the user to every page
    assert at.sidebar.text_input[0].value == "Dr Ana"


def test_a_candidate_that_cannot_answer_types_the_models_in_use_can_is_said_before_accept(models, trained_models_dir,
                                                                                          tmp_path, app_store):
    """A tree trained on PBC's 7 classes was accepted in one click: Classification found no blasts after it."""
    narrower = candidate(trained_models_dir, tmp_path, "run-1")
    node = json.loads((narrower / "MYM.json").read_text())
    (narrower / "MYM.json").write_text(json.dumps({**node, "classes": ["NEU"]}))  # it no longer tells EOS apart
    assert versions.answers(trained_models_dir) - versions.answers(narrower) == {"EOS"}
    _recorded_candidate(app_store, narrower)
    same = _recorded_candidate(app_store, candidate(trained_models_dir, tmp_path, "run-2"))
    from test_app_adapt import training_page

    at = training_page("versions")
    assert not at.exception
    assert [w.value for w in at.warning] == ["These models cannot answer eosinophil (EOS), which the models in use "
                                             "can: cells of those types would be called something else."]
    assert versions.answers(app_store.get_model_version(same).folder) == versions.answers(trained_models_dir)
