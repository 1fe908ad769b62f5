"""Versions of a classifier tree: promoting a newly trained one, switching back, and which is in use.

Layout: the shipped tree is ``<models_dir>/classifier/default/`` (in git: in use while nothing was
promoted); what the server accepts lives in ``settings().versions_dir`` (BLOODCELLS_VERSIONS_DIR, by
default ``<models_dir>/classifier/``; the container's is in its data volume, so that an upgrade of the
image, which replaces models_dir, keeps it)::

    versions/20261123T101500Z-1a2b3c4d/   one folder per promoted tree, never changed afterwards
    default.current                  {"version": "20261123T101500Z-1a2b3c4d", "history": [null],
                                      "log": [{"version": ..., "action": "promote", "by": "ana", "at": ...}]}

A version id is the UTC time of its first promotion and the start of the sha256 of its files (the
same files promoted again are that version). The pointer file ``<tree>.current`` names the version
in use (null: the shipped folder) and the ones in use before it, most recent last, for ``rollback``, and the log of every switch: what was put in use, how, by whom and when (written in
the same replacement of the file as the switch itself, so neither is ever without the other). Every switch first loads the folder it
switches to (``TreeClassifier.load`` verifies every file's sha256), then replaces the pointer
with ``os.replace``: readers see the old pointer or the new one, and either names a complete tree.
No folder is moved or deleted, so the trees in use before stay available.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from .classify import ModelFileError, TreeClassifier
from .settings import settings
from .store import ReviewError, person_name

SHIPPED = "shipped"


class VersionError(ValueError):
    """A switch that cannot be made as asked (no such version, nothing to roll back to, decided already, no name)."""


def candidate_dir() -> Path:
    """A fresh folder for a training run's models (in the data folder): not in use until promoted."""
    # unique: two people training in the same second must not write one folder
    folder = settings().data_dir / "training" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def shipped_dir(tree_name: str) -> Path:
    """The tree's folder that ships with the app, used while no version is promoted."""
    return settings().models_dir / "classifier" / tree_name


def versions_dir() -> Path:
    return settings().versions_dir / "versions"


def current_version(tree_name: str) -> str | None:
    """The id of the version in use, or None when it is the shipped folder."""
    return _read_pointer(tree_name)["version"]


def can_roll_back(tree_name: str) -> bool:
    """Whether a version was in use before the current one (what ``rollback`` would put back)."""
    return bool(_read_pointer(tree_name)["history"])


def switch_log(tree_name: str) -> list[dict]:
    """Every switch of the version in use, newest first: {"version" (None: shipped), "action" ("promote",
    "accept", "use" or "rollback"), "by", "at" (a UTC datetime)}. Switches made before they were logged
    are not in it."""
    return [{**entry, "at": datetime.fromisoformat(entry["at"])} for entry in reversed(_read_pointer(tree_name)["log"])]


def current_dir(tree_name: str) -> Path:
    """The folder of the tree in use."""
    return _folder(tree_name, current_version(tree_name))


def version_of(models_dir: Path) -> str:
    """What a tree folder is called in analyses' records: its version id, "shipped" for the folder
    that ships with the app, else the folder itself (a tree loaded from elsewhere, e.g. the CLI's --models)."""
    folder = Path(models_dir).resolve()
    if folder.parent == versions_dir().resolve():
        return folder.name
    if folder.parent == shipped_dir(folder.name).parent.resolve():
        return SHIPPED
    return str(models_dir)


def folder_of(tree_name: str, version: str) -> Path | None:
    """The folder of the tree an analysis records as its ``version`` (``version_of``'s name: an id, "shipped",
    or a folder), or None when it is no longer on this server."""
    folder = shipped_dir(tree_name) if version == SHIPPED else (
        versions_dir() / version if version in list_versions(tree_name) else Path(version))
    return folder if (folder / "classifier.json").is_file() else None


def answers(folder: str | Path) -> set[str]:
    """The cell types a tree folder can answer, read from its files (its weights are not loaded): what its
    node models choose between and its single-child descents lead to, less the nodes it descends from."""
    folder = Path(folder)
    manifest = json.loads((folder / "classifier.json").read_text())
    passthrough = manifest.get("passthrough", {})
    chosen = {code for node in manifest["nodes"] for code in json.loads((folder / f"{node}.json").read_text())["classes"]}
    return (chosen | set(passthrough.values())) - set(manifest["nodes"]) - set(passthrough)


def list_versions(tree_name: str) -> list[str]:
    """The ids of the promoted versions of ``tree_name``, oldest first."""
    root = versions_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        manifest = folder / "classifier.json"
        if folder.name.startswith(".") or not manifest.is_file():  # a promotion still copying
            continue
        if json.loads(manifest.read_text()).get("tree") == tree_name:
            found.append(folder.name)
    return sorted(found)  # ids start with the time of promotion


def promote(candidate: str | Path, tree_name: str, store=None, *, by: str, action: str = "promote") -> Path:
    """Make the trained tree in folder ``candidate`` the one in use; returns its version folder.

    The candidate is copied to a hidden folder under ``versions/`` and loaded from there (every
    file's sha256 verified) before the pointer switches to it: a copy that fails to load raises
    and leaves the tree in use as it was. With ``store``, its models are registered first, so that
    a database failure switches nothing either (registering is idempotent: accepting again works).
    ``by``: who, for the log of switches.
    """
    by = _who(by)
    target = _stored_version(candidate, tree_name, store)[0]
    _switch(tree_name, target.name, action, by)
    return target


def _stored_version(candidate: str | Path, tree_name: str, store=None) -> tuple[Path, bool]:
    """The trained tree in folder ``candidate`` copied, loaded and registered as a version, not yet in use:
    its version folder, and whether it is new (the same files promoted before are that version)."""
    root, candidate = versions_dir(), Path(candidate)
    if not (candidate / "classifier.json").is_file():
        raise ModelFileError(f"{candidate}: not a trained tree's folder (it has no classifier.json)")
    if candidate.resolve() in root.resolve().parents:  # the copy would go inside what it copies, for ever
        raise ModelFileError(f"{candidate}: holds the versions folder {root}; give the trained tree's own folder")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".incoming-{uuid.uuid4().hex}"
    try:
        shutil.copytree(candidate, staging)
        classifier = _load(staging, tree_name)
        files_sha256 = _files_sha256(staging)
        # The same files promoted again (Accept clicked twice, a folder promoted anew): that version is this one.
        target = next((folder for folder in root.glob(f"*-{files_sha256[:8]}")
                       if folder.is_dir() and _files_sha256(folder) == files_sha256), None)
        new = target is None
        if not new:
            shutil.rmtree(staging)
        else:
            target = root / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{files_sha256[:8]}"
            staging.rename(target)
    except ModelFileError as error:  # about the copy, a folder gone with it: said of the folder given
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelFileError(str(error).replace(str(staging), str(candidate))) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if store is not None:
        from .train import register_models

        register_models(store, target, classifier.tree)
    return target, new


def accept_candidate(store, model_version_id: int, person: str) -> Path:
    """Accept a candidate recorded in the store's lineage: promote its folder (every page then uses
    it; the tree in use before stays for rollback), record who accepted it and the version id, and
    remove the candidate folder (its copy is the version).

    The decision is recorded before the switch: switched first, a colleague's Discard in between left the
    new tree in use under a record saying "discarded". Refused, the copy made for it is removed (never in
    use, it would only be offered under Versions) and nothing is switched."""
    row = _candidate(store, model_version_id)
    person = _who(person)
    target, new = _stored_version(row.folder, row.tree, store)
    try:
        store.decide_model_version(model_version_id, "accepted", person, version=target.name)
    except ReviewError:  # decided meanwhile; a colleague's Accept of the same files switches to this copy
        if new and store.get_model_version(model_version_id).version != target.name:
            shutil.rmtree(target, ignore_errors=True)
        raise
    try:
        _switch(row.tree, target.name, "accept", person)
    except (OSError, VersionError) as error:  # recorded as accepted: Accept cannot be clicked again
        raise VersionError(f"model version #{model_version_id} is recorded as accepted as version {target.name}, "
                           f"but it could not be put in use ({error}): put it in use under Versions") from error
    shutil.rmtree(row.folder, ignore_errors=True)  # promoted as a copy: the candidate would only fill the disk
    return target


def record_trained(store, folder: str | Path, tree_name: str, evaluation, person: str) -> int:
    """Record a tree just trained in the app (its ``evaluation`` on the uploaded cells it never saw) as a
    candidate "trained" model version, like an adapted tree: listed under Versions for anyone to accept or
    discard (held only by the page that trained it, it was lost with its tab, its folder left on disk)."""
    return store.record_model_version(
        tree=tree_name, kind="trained", folder=str(folder), base={}, cells=evaluation.cells + evaluation.skipped_seen,
        analyses=[], figures={"after": {"lab": evaluation.lineage_figures()}}, started_by=person)


def discard_candidate(store, model_version_id: int, person: str) -> None:
    """Discard a candidate: recorded with who and when; its folder (never in use) is removed."""
    row = _candidate(store, model_version_id)
    store.decide_model_version(model_version_id, "discarded", person)
    shutil.rmtree(row.folder, ignore_errors=True)


def _candidate(store, model_version_id: int):
    row = store.get_model_version(model_version_id)
    if row.status != "candidate":
        raise VersionError(f"model version #{model_version_id} was already {row.status} by {row.decided_by}")
    return row


def use_version(tree_name: str, version: str | None, *, by: str) -> Path:
    """Put ``version`` (an id from ``list_versions``; None: the shipped folder) in use, after loading
    it; the one in use before is kept for ``rollback``. Returns its folder."""
    by = _who(by)
    if version is not None and version not in list_versions(tree_name):
        raise VersionError(f"tree {tree_name!r} has no version {version!r} "
                         f"(versions: {', '.join(list_versions(tree_name)) or 'none'})")
    folder = _folder(tree_name, version)
    _load(folder, tree_name)
    _switch(tree_name, version, "use", by)
    return folder


def rollback(tree_name: str, *, by: str) -> Path:
    """Put back the version in use before the current one (after loading it); returns its folder.
    Versions whose folders were removed from disk since are passed over (and left out of the history)."""
    by = _who(by)
    with _pointer_held(tree_name):
        state = _read_pointer(tree_name)
        history, removed = list(state["history"]), []
        while history and history[-1] is not None and not _folder(tree_name, history[-1]).is_dir():
            removed.append(history.pop())
        if removed:
            _write_pointer(tree_name, {**state, "history": history})
        if not history:
            raise VersionError(f"tree {tree_name!r} has no earlier version to roll back to")
        previous = history[-1]
        folder = _folder(tree_name, previous)
        _load(folder, tree_name)
        _write_pointer(tree_name, {"version": previous, "history": history[:-1],
                                   "log": [*state["log"], _logged(previous, "rollback", by)]})
        return folder


def _folder(tree_name: str, version: str | None) -> Path:
    return shipped_dir(tree_name) if version is None else versions_dir() / version


def _load(folder: Path, tree_name: str) -> TreeClassifier:
    classifier = TreeClassifier.load(folder)
    if classifier.tree.name != tree_name:
        raise ModelFileError(f"{folder}: its models are for tree {classifier.tree.name!r}, not {tree_name!r}")
    return classifier


def _files_sha256(folder: Path) -> str:
    """One sha256 over every file's relative path and content."""
    from .store import sha256_file

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _pointer_file(tree_name: str) -> Path:
    return settings().versions_dir / f"{tree_name}.current"


def _read_pointer(tree_name: str) -> dict:
    pointer = _pointer_file(tree_name)
    if not pointer.is_file():
        return {"version": None, "history": [], "log": []}
    try:
        state = json.loads(pointer.read_text())
        # "log" is missing from the files written before switches were logged
        return {"version": state["version"], "history": list(state["history"]), "log": list(state.get("log", []))}
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{pointer}: unreadable ({error}); delete it to use {shipped_dir(tree_name)}") from error


@contextmanager
def _pointer_held(tree_name: str) -> Iterator[None]:
    """Changes of the pointer one at a time, across the app's threads and other processes (the CLI):
    each reads what the one before wrote. Two people accepting trees at once both read the same
    pointer, and the version written first dropped out of the history (rollback skipped it)."""
    lock = _pointer_file(tree_name).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _switch(tree_name: str, version: str | None, action: str, by: str) -> None:
    with _pointer_held(tree_name):
        state = _read_pointer(tree_name)
        if version != state["version"]:
            _write_pointer(tree_name, {"version": version, "history": [*state["history"], state["version"]],
                                       "log": [*state["log"], _logged(version, action, by)]})


def _who(by: str | None) -> str:
    """The name a switch is logged under, checked before any work as the store checks a reviewer's: a lab must
    know who changed the models every analysis uses (a name the store refused switched the models, then
    failed to record the acceptance)."""
    if not (by or "").strip():
        raise VersionError("say who is switching the version in use (a name)")
    try:
        return person_name(by, "switch of the version in use")
    except ReviewError as error:
        raise VersionError(str(error)) from None


def _logged(version: str | None, action: str, by: str) -> dict:
    return {"version": version, "action": action, "by": by, "at": datetime.now(UTC).isoformat(timespec="seconds")}


def _write_pointer(tree_name: str, state: dict) -> None:
    """Replace the pointer file atomically: written in full to a temporary file beside it, then renamed."""
    pointer = _pointer_file(tree_name)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    temporary = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex}")
    try:
        with temporary.open("x") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())  # the content is on disk before the name points at it
        os.replace(temporary, pointer)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
