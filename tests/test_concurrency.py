"""Sessions classifying different zips at once, as Streamlit runs them: threads of one process sharing
one ``load_classifier()`` model and one Store. Every session gets exactly its own results: every
row (file, cell type, confidence, stored image) is checked against a one-at-a-time reference, while
one more session's damaged upload fails on its own.
"""

from __future__ import annotations

import threading
import zipfile

import pytest

from bloodcells.inputs import InputError, open_image
from bloodcells.synthetic import cell_image, encode

CODES = ("LYT", "EOS", "NGB", "NGS")


def _session_zip(path, session: int, cells: int = 10) -> dict[str, bytes]:
    """A zip of cells no other session has (seeds differ), and ``session % 3`` files that are skipped."""
    members = {}
    for n in range(cells):
        code = CODES[(n + session) % len(CODES)]
        members[f"session{session}/{code}_{n:03d}.png"] = encode(cell_image(code, 1000 * session + n, 32))
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        for bad in range(session % 3):
            archive.writestr(f"session{session}/broken_{bad}.png", b"not an image")
    return members


@pytest.mark.slow
@pytest.mark.parametrize("sessions", [2, 8])
def test_concurrent_sessions_get_exactly_their_own_results(sessions, store, trained_models_dir, tmp_path):
    from bloodcells.classify import classify, load_classifier

    zips = {k: tmp_path / f"upload-{k}.zip" for k in range(sessions)}
    members = {k: _session_zip(path, k) for k, path in zips.items()}
    reference_model = load_classifier(trained_models_dir)
    reference = {k: {name: reference_model.classify_images([open_image(content, name)])[0]
                     for name, content in files.items()} for k, files in members.items()}

    barrier = threading.Barrier(sessions)
    outcomes, errors, models = {}, {}, {}

    def session(k: int) -> None:
        try:
            classifier = load_classifier(trained_models_dir)  # what every Streamlit session does
            models[k] = classifier
            barrier.wait()
            outcomes[k] = classify(zips[k], classifier=classifier, store=store, name=f"upload-{k}.zip",
                                   batch_size=4)
        except Exception as error:  # reported below with the session number
            errors[k] = repr(error)

    broken = {}

    def broken_session() -> None:
        """Another user drops a damaged zip at the same moment: only their analysis fails."""
        try:
            classify(b"PK\x03\x04 truncated", name="broken.zip", classifier=load_classifier(trained_models_dir),
                     store=store)
        except InputError as error:
            broken["error"] = str(error)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    threads.append(threading.Thread(target=broken_session))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == {}
    assert broken["error"].startswith("broken.zip: ")
    (failed,) = [a for a in store.list_analyses() if a.name == "broken.zip"]
    assert failed.status == "failed" and "broken.zip" in failed.error
    assert len({id(model) for model in models.values()}) == 1  # one shared model cache
    assert len({outcome.analysis_id for outcome in outcomes.values()}) == sessions

    for k, outcome in outcomes.items():
        expected = reference[k]
        assert [row.filename for row in outcome.rows] == list(members[k])
        for row in outcome.rows:
            assert row.result.code == expected[row.filename].code
            assert row.result.confidence == pytest.approx(expected[row.filename].confidence, abs=1e-4)
        assert sorted(p.name for p in outcome.problems) == [f"session{k}/broken_{b}.png" for b in range(k % 3)]

        analysis = store.get_analysis(outcome.analysis_id)
        assert (analysis.status, analysis.name) == ("done", f"upload-{k}.zip")
        assert sorted(p.filename for p in analysis.predictions) == sorted(members[k])
        for prediction in analysis.predictions:
            assert prediction.code == expected[prediction.filename].code
            assert prediction.confidence == pytest.approx(expected[prediction.filename].confidence, abs=1e-4)
            assert store.read_blob(blob_id=prediction.blob_id) == members[k][prediction.filename]
