"""Sign-off, reopening and amendments in the store (SQLite, and MySQL/MariaDB when
BLOODCELLS_TEST_MYSQL_URL is set)."""

import re
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import event, inspect
from test_store import head_revision

from bloodcells.store import (
    AnalysisLocked,
    ChangedSince,
    DetectionRow,
    PredictionRow,
    Review,
    ReviewError,
    Signoff,
    Store,
)


def classified(store, codes, name="cells.zip") -> int:
    analysis_id = store.start_analysis(name, "classification")
    store.finish_analysis(analysis_id, predictions=[PredictionRow(f"c{n}.png", code, "ALL", 0.9, {}, False)
                                                    for n, code in enumerate(codes)])
    return analysis_id


def test_undoing_a_review_restores_the_cells_label_and_its_reviewed_state(store):
    analysis_id = classified(store, ["NGS", "LYT"])
    first, second = store.get_analysis(analysis_id).predictions
    store.review(first.id, "NGB", "dr.a")
    mis_key = store.review(second.id, "MON", "dr.a")  # a mis-key on a cell nobody had reviewed
    again = store.review(first.id, "NGS", "dr.a")
    store.undo_review(first.id, "NGB", "dr.a", again.id)  # back to the first reviewer's label: still reviewed
    undone = store.undo_review(second.id, None, "dr.a", mis_key.id)  # back to not reviewed
    first, second = store.get_analysis(analysis_id).predictions
    assert (first.final_code, first.reviewed, second.final_code, second.reviewed) == ("NGB", True, "LYT", False)
    assert (undone.old_code, undone.new_code) == ("MON", "LYT") and len(second.reviews) == 2  # audit trail
    assert store.result_counts([analysis_id])[analysis_id].reviewed == 1
    store.sign_off(analysis_id, "dr.a")
    with pytest.raises(AnalysisLocked):
        store.undo_review(first.id, None, "dr.a", first.last_review_id)


def test_undo_after_a_reopening_takes_back_only_changes_made_since(store):
    """Backspace after a reopening undid a confirmation the signed record held: the cell went back to
    unreviewed, and the amended report listed "EOS -> EOS"."""
    from bloodcells.store import ChangedSince

    analysis_id = classified(store, ["EOS", "NGS"])
    first, second = store.get_analysis(analysis_id).predictions
    confirmed = store.review(first.id, "EOS", "dr.a")
    store.sign_off(analysis_id, "dr.a", specimen="peripheral blood")
    store.reopen(analysis_id, "dr.a", reason="a second look")
    amended = store.review(second.id, "NGB", "dr.a")
    store.undo_review(second.id, amended.replaced, "dr.a", amended.id)  # made since the reopening: undone
    with pytest.raises(ChangedSince, match=r"signed off before the analysis was reopened .*give it its type"):
        store.undo_review(first.id, confirmed.replaced, "dr.a", confirmed.id)
    cells = store.get_analysis(analysis_id).predictions
    assert (cells[0].reviewed, cells[0].final_code, len(cells[0].reviews)) == (True, "EOS", 1)
    assert (cells[1].reviewed, cells[1].final_code) == (False, "NGS")


def test_a_signed_analysis_is_locked_until_reopened_and_later_reviews_are_amendments(store):
    analysis_id = classified(store, ["NGS", "NGS", "LYT"])
    first, second, _ = store.get_analysis(analysis_id).predictions
    before = store.review(first.id, "NGB", "dr.a")
    with pytest.raises(ReviewError, match="state the specimen"):  # "not stated" reads as a marrow's
        store.sign_off(analysis_id, "dr.a", white_cell_count=6.5)
    signed = store.sign_off(analysis_id, " dr.a ", category="peripheral blood", comment="Normal.", target=100,
                            white_cell_count=6.5, specimen="peripheral blood")
    assert (signed.action, signed.person, signed.category, signed.target, signed.white_cell_count) == \
        ("signed", "dr.a", "peripheral blood", 100, 6.5)
    assert store.get_analysis(analysis_id).signed_off.id == signed.id

    with pytest.raises(AnalysisLocked, match=f"#{analysis_id} was signed off by dr.a on .* reopen it"):
        store.review(second.id, "MON", "dr.b")
    assert store.get_analysis(analysis_id).predictions[1].reviews == []  # nothing was written

    reopened = store.reopen(analysis_id, "dr.b", reason="a band counted as segmented")
    assert store.get_analysis(analysis_id).signed_off is None
    amendment = store.review(second.id, "NGB", "dr.b")
    undone = store.review(first.id, "NGS", "dr.b")
    assert (before.reopening_id, amendment.reopening_id, undone.reopening_id) == (None, reopened.id, reopened.id)
    store.sign_off(analysis_id, "dr.b", category="peripheral blood")

    events = store.signoffs([analysis_id])[analysis_id]
    assert [(e.action, e.person, e.comment) for e in events] == [
        ("signed", "dr.a", "Normal."), ("reopened", "dr.b", "a band counted as segmented"), ("signed", "dr.b", "")]
    assert events[0].created_at <= events[1].created_at <= events[2].created_at
    assert store.result_counts([analysis_id])[analysis_id].amendments == 2
    assert store.reviewers([analysis_id]) == {analysis_id: ["dr.a", "dr.b"]}
    assert store.final_code_counts([analysis_id]) == {analysis_id: Counter({"NGS": 1, "NGB": 1, "LYT": 1})}
    first_again = store.get_analysis(analysis_id).predictions[0]
    assert [(r.old_code, r.new_code) for r in first_again.reviews] == [("NGS", "NGB"), ("NGB", "NGS")]  # all kept


def test_one_name_typed_two_ways_is_one_reviewer(store):
    analysis_id = classified(store, ["NGS", "LYT"])
    first, second = store.get_analysis(analysis_id).predictions
    store.review(first.id, "NGB", "Jos\u00e9")
    store.review(second.id, "MON", "Jose\u0301")  # e and a combining accent: the same name on screen
    assert store.reviewers([analysis_id]) == {analysis_id: ["Jos\u00e9"]}


def test_control_characters_in_names_categories_and_comments_are_refused_not_stored(store):
    """A NUL or a line break in a reviewer's name printed as "?" in the PDF; U+202E turned the date shown
    after a name around. Comments keep their line breaks; an upload's name is put on one line."""
    analysis_id = classified(store, ["NGS"])
    cell = store.get_analysis(analysis_id).predictions[0].id
    for name, found in (("Dr\x00Null", "a control character (U+0000)"), ("Dr\nSmith", "a line break (U+000A)"),
                        ("Ana\tLopez", "a tab (U+0009)"), ("Ana\u2028Lopez", "a line break (U+2028)"),
                        ("\u202eDr Evil", "a direction override (U+202E)")):
        with pytest.raises(ReviewError, match=re.escape(f"the name of the person making the review holds {found}: "
                                                        "type it again without it")):
            store.review(cell, "NGB", name)
    with pytest.raises(ReviewError, match=re.escape("the category holds a tab (U+0009)")):
        store.sign_off(analysis_id, "dr.a", category="marrow\tchild")
    with pytest.raises(ReviewError, match=re.escape("the comment holds a control character (U+0000)")):
        store.sign_off(analysis_id, "dr.a", comment="fine\x00")
    assert store.count_rows(Review) == 0 and store.signoffs([analysis_id]) == {analysis_id: []}
    store.sign_off(analysis_id, "dr.a", category="marrow", comment="Line one.\nLine two.\tIndented.")
    assert store.signoffs([analysis_id])[analysis_id][0].comment == "Line one.\nLine two.\tIndented."
    uploaded = store.start_analysis("smear\t1\n\u202eod.zip", "classification")
    assert store.get_analysis(uploaded).name == "smear 1 od.zip"


def test_a_report_takes_no_category_or_comment_a_sign_off_would_refuse(store):
    """`report --category $'bone\tmarrow'` and the page's draft report printed "bonemarrow"."""
    from bloodcells.signout import ReportError, build_report

    analysis_id = classified(store, ["NGS"])
    with pytest.raises(ReportError, match=re.escape("the category holds a tab (U+0009)")):
        build_report(store, analysis_id, category="bone\tmarrow")
    with pytest.raises(ReportError, match=re.escape("the comment holds a direction override (U+202E)")):
        build_report(store, analysis_id, comment="normal \u202e")
    assert build_report(store, analysis_id, category=" marrow ", comment="a\nb").category == "marrow"


def test_bad_sign_offs_are_refused_with_the_reason(store):
    analysis_id = classified(store, ["NGS"])
    with pytest.raises(ReviewError, match="needs the name"):
        store.sign_off(analysis_id, "  ")
    with pytest.raises(ReviewError, match="needs the name"):
        store.review(store.get_analysis(analysis_id).predictions[0].id, "NGB", "")
    with pytest.raises(ReviewError, match="needs the name"):  # looked empty, was stored
        store.review(store.get_analysis(analysis_id).predictions[0].id, "NGB", "\u00a0\u200b")
    with pytest.raises(ReviewError, match="category is longer than 128"):
        store.sign_off(analysis_id, "dr.a", category="x" * 129)
    with pytest.raises(ReviewError, match="a reopening needs its reason"):  # the audit trail says why
        store.reopen(analysis_id, "dr.a", " \u200b ")
    with pytest.raises(ReviewError, match="not signed off: there is nothing to reopen"):
        store.reopen(analysis_id, "dr.a", "a second look")
    store.sign_off(analysis_id, "dr.a")
    with pytest.raises(ReviewError, match="already signed off by dr.a"):
        store.sign_off(analysis_id, "dr.b")
    with pytest.raises(ReviewError, match="#999 does not exist"):
        store.sign_off(999, "dr.a")
    failed = store.start_analysis("broken.zip", "classification")
    store.fail_analysis(failed, "InputError: not a zip")
    with pytest.raises(ReviewError, match="is failed: only a finished analysis"):
        store.sign_off(failed, "dr.a")
    assert [e.action for e in store.signoffs([analysis_id, failed])[analysis_id]] == ["signed"]


def test_counts_of_detections_and_deleting_a_signed_analysis(store):
    boxes = store.start_analysis("field.png", "detection")
    store.finish_analysis(boxes, detections=[
        DetectionRow("field.png", "WBC", 0.9, (0, 0, 9, 9), "MON", "ALL/MYE/MYM/MON"),
        DetectionRow("field.png", "WBC", 0.9, (9, 0, 19, 9), "MON", "ALL/MYE/MYM/MON"),
        DetectionRow("field.png", "RBC", 0.9, (0, 9, 9, 19))])
    assert store.final_code_counts([boxes]) == {boxes: Counter({"MON": 2})}
    store.sign_off(boxes, "dr.a")
    store.reopen(boxes, "dr.b", "recount")
    store.delete_analysis(boxes)
    assert store.count_rows(Signoff) == 0 and store.signoffs([boxes]) == {boxes: []}


def test_migration_0003_adds_sign_offs_and_keeps_the_reviews(database_url):
    from alembic import command

    store = Store(database_url)
    store.upgrade()
    analysis_id = classified(store, ["NGS"])  # analyses and predictions are taken back to 0002
    command.downgrade(store._alembic_config(), "0002")
    with store.engine.begin() as connection:  # and a review without the column 0003 adds
        connection.exec_driver_sql("INSERT INTO reviews (prediction_id, old_code, new_code, reviewer, created_at) "
                                   "SELECT id, code, 'NGB', 'dr.a', '2026-11-01 12:00:00' FROM predictions")
    store.upgrade()
    assert store.current_revision() == head_revision(store)
    [review] = store.get_analysis(analysis_id).predictions[0].reviews
    assert (review.old_code, review.new_code, review.reviewer, review.reopening_id) == ("NGS", "NGB", "dr.a", None)
    store.sign_off(analysis_id, "dr.a")
    command.downgrade(store._alembic_config(), "0002")
    assert "signoffs" not in inspect(store.engine).get_table_names()
    assert "reopening_id" not in {c["name"] for c in inspect(store.engine).get_columns("reviews")}
    store.upgrade()
    assert store.signoffs([analysis_id]) == {analysis_id: []}
    assert len(store.get_analysis(analysis_id).predictions[0].reviews) == 1
    store.engine.dispose()


def test_reviewers_whose_names_differ_only_in_case_or_accents_are_both_listed(store):
    """MySQL's usual collations compare "José" and "jose" equal; the count log must still name both."""
    analysis_id = store.start_analysis("cells.zip", "classification")
    store.finish_analysis(analysis_id, predictions=[
        PredictionRow(f"cell_{n}.png", "NGS", "ALL/MYE/MYM/NEU/NGS", 0.9, {}, False, f"cell {n}".encode())
        for n in range(3)])
    for prediction, reviewer in zip(store.get_analysis(analysis_id).predictions, ["José", "jose", "José"], strict=True):
        store.review(prediction.id, "NGB", reviewer)
    assert store.reviewers([analysis_id]) == {analysis_id: ["José", "jose"]}


class PausedAfter:
    """Holds the thread that runs ``action`` for a second after its first statement containing
    ``fragment``, while the test acts as another user: the window a real race needs, made wide."""

    def __init__(self, store, fragment: str, action):
        self.reached, self.outcome = threading.Event(), {}
        self.thread = threading.Thread(target=self._run, args=(action,))

        def pause(_conn, _cursor, statement, *_):
            if fragment in statement and threading.current_thread() is self.thread and not self.reached.is_set():
                self.reached.set()
                time.sleep(1.0)

        event.listen(store.engine, "after_cursor_execute", pause)
        self.thread.start()
        assert self.reached.wait(30)

    def _run(self, action):
        try:
            self.outcome["result"] = action()
        except Exception as error:  # the test asserts on it
            self.outcome["error"] = error

    def result(self):
        self.thread.join(60)
        return self.outcome


def test_two_people_signing_off_at_once_make_one_sign_off(store):
    """The second sign-off saw "not signed" before the first committed: two sign-offs in force, the
    second one's category silently replacing the first's."""
    analysis_id = classified(store, ["NGS", "LYT"])
    first = PausedAfter(store, "FROM signoffs", lambda: store.sign_off(analysis_id, "dr.a", category="marrow"))
    with pytest.raises(ReviewError, match="already signed off by dr.a"):
        store.sign_off(analysis_id, "dr.b", category="blood")
    assert "error" not in first.result()
    assert [(s.action, s.person) for s in store.signoffs([analysis_id])[analysis_id]] == [("signed", "dr.a")]


@pytest.mark.parametrize("other", ["review", "sign off", "delete"])
def test_a_review_waits_for_what_another_user_did_to_the_analysis_meanwhile(store, other):
    """A review reads the cell, then another user changes it, signs the analysis off or deletes it
    before the review is written: the review must see that, not write over it (MySQL kept the
    snapshot of its first read; SQLite read without a lock; a deleted analysis gave a traceback)."""
    analysis_id = classified(store, ["NGS", "LYT"])
    cell = store.get_analysis(analysis_id).predictions[0]
    mine = PausedAfter(store, "FROM predictions", lambda: store.review(cell.id, "NGB", "dr.a"))
    if other == "review":
        store.review(cell.id, "EOS", "dr.b")
        assert "error" not in mine.result()
        assert [(r.old_code, r.new_code) for r in store.get_analysis(analysis_id).predictions[0].reviews] == [
            ("NGS", "EOS"), ("EOS", "NGB")]  # each change names the label it replaced
    elif other == "sign off":
        store.sign_off(analysis_id, "dr.b")
        assert isinstance(mine.result()["error"], AnalysisLocked)
        assert store.get_analysis(analysis_id).predictions[0].reviews == []
    else:
        store.delete_analysis(analysis_id)
        assert isinstance(mine.result()["error"], KeyError)


def test_undo_does_not_take_back_another_users_later_change(store):
    analysis_id = classified(store, ["NGS"])
    [cell] = store.get_analysis(analysis_id).predictions
    mine = store.review(cell.id, "NGB", "dr.a")
    store.review(cell.id, "EOS", "dr.b")
    with pytest.raises(ChangedSince, match="c0.png was changed to EOS by dr.b on .* since: undoing would take"):
        store.undo_review(cell.id, None, "dr.a", mine.id)
    assert store.get_analysis(analysis_id).predictions[0].final_code == "EOS"
    # a colleague's later confirmation of the same label: undoing was allowed (only labels were compared)
    mine = store.review(cell.id, "NGB", "dr.a")
    store.review(cell.id, "NGB", "dr.b")
    with pytest.raises(ChangedSince, match="c0.png was confirmed as NGB by dr.b on .* since"):
        store.undo_review(cell.id, None, "dr.a", mine.id)
    assert store.get_analysis(analysis_id).predictions[0].reviewed


def test_a_double_click_and_two_undos_give_the_cell_back_unreviewed(store):
    """Both clicks of a double click carry the page's state: the second, agreeing, follows the first, and Undo
    goes back through both (it was refused, naming the reviewer's own undo as a colleague's change)."""
    analysis_id = classified(store, ["NGS"])
    [cell] = store.get_analysis(analysis_id).predictions
    first = store.review(cell.id, "LYT", "ana", seen=None)
    second = store.review(cell.id, "LYT", "ana", seen=None)  # the same page, clicked again
    assert (first.previous, second.previous, second.replaced) == (None, first.id, "LYT")
    undone = store.undo_review(cell.id, second.replaced, "ana", second.id)
    store.undo_review(cell.id, first.replaced, "ana", undone.id)  # Undo's list now follows the undo
    assert not store.get_analysis(analysis_id).predictions[0].reviewed
    colleague = store.review(cell.id, "EOS", "bo")
    store.undo_review(cell.id, None, "bo", colleague.id)
    with pytest.raises(ChangedSince, match="c0.png was given back unreviewed by bo on .* since"):
        store.review(cell.id, "NGB", "ana", seen=colleague.id)


def test_a_review_from_a_page_drawn_before_a_colleagues_review_is_refused_not_written_over_it(store):
    """Two people on one analysis: B's page, drawn before A's correction, confirmed the model's label with a
    click and overwrote A's correction, with no word to either."""
    analysis_id = classified(store, ["NGB", "LYT"])
    first, second = store.get_analysis(analysis_id).predictions
    drawn = {p.id: p.last_review_id for p in (first, second)}  # what B's page shows: nothing reviewed
    store.review(first.id, "NGS", "dr.a")  # A corrects it
    with pytest.raises(ChangedSince, match="c0.png was changed to NGS by dr.a on .* since: look at it again"):
        store.review(first.id, "NGB", "dr.b", seen=drawn[first.id])
    assert store.get_analysis(analysis_id).predictions[0].final_code == "NGS"
    agreeing = store.review(first.id, "NGS", "dr.b", seen=drawn[first.id])  # to the label it has: taken
    assert (agreeing.old_code, agreeing.new_code, agreeing.reviewer) == ("NGS", "NGS", "dr.b")
    assert store.review(first.id, "NGB", "dr.b", seen=agreeing.id).new_code == "NGB"  # redrawn: B may change it
    assert store.review(second.id, "MON", "dr.b", seen=drawn[second.id]).new_code == "MON"  # untouched since
