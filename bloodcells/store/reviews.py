"""Reviews and sign-offs: who changed a cell's label or signed a differential, and when.

Nothing here is ever overwritten. A signed-off analysis is locked: a review is refused until
someone reopens it, and each review made while it is reopened carries that reopening's id, so
the amendments after a sign-off can be told apart from the review that came before it.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from ..clock import stamp
from .errors import NotFound
from .schema import BONE_MARROW, REOPENED, SIGNED, SPECIMENS, Analysis, Detection, Prediction, Review, Signoff

NAME_LENGTH = 128  # Review.reviewer, Signoff.person and Signoff.category are String(128)
# Signoff.comment is TEXT: 65,535 bytes on MySQL, which this many characters of 4 bytes fit
COMMENT_LENGTH = 10_000


class ReviewError(ValueError):
    """A review or sign-off that cannot be made; the message says why, in a lab user's words."""


class AnalysisLocked(ReviewError):
    """The analysis is signed off: reopen it before changing a cell."""


class ChangedSince(ReviewError):
    """Undo refused: the change being undone no longer stands as it was made: someone changed the cell
    since, or it was signed off since (it is part of a signed record: a change now is an amendment)."""


# Direction overrides, embeddings and isolates: in a name, U+202E turns what follows around (the date
# after it on the pages); a person types none of them.
DIRECTION_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


LINE_BREAKS = "\n\r\u2028\u2029"  # the last two: Unicode's line and paragraph separators


def printable(text: str, what: str, line_breaks: bool = False) -> str:
    """``text``, refused (ReviewError) with the character named when it holds one that prints as nothing or
    as "?" in the report: a NUL or another control character, a tab or a line break where one line is
    expected (``line_breaks`` allows them), a direction override."""
    for character in text:
        if line_breaks and character in LINE_BREAKS + "\t":
            continue
        if character == "\t":
            found = "a tab"
        elif character in LINE_BREAKS:
            found = "a line break"
        elif character in DIRECTION_CONTROLS:
            found = "a direction override"
        elif unicodedata.category(character) == "Cc":
            found = "a control character"
        else:
            continue
        raise ReviewError(f"the {what} holds {found} (U+{ord(character):04X}): type it again without it")
    return text


def _comment(text: str, what: str) -> str:
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()  # one kind of line break
    if len(text) > COMMENT_LENGTH:
        raise ReviewError(f"the {what} is longer than {COMMENT_LENGTH:,} characters")
    return printable(text, what, line_breaks=True)


def _category(text: str) -> str:
    text = (text or "").strip()
    if len(text) > NAME_LENGTH:
        raise ReviewError(f"the category is longer than {NAME_LENGTH} characters")
    return printable(text, "category")


def signoff_text(category: str | None, comment: str | None) -> tuple[str, str]:
    """A sign-off's category and comment as they are stored and printed (the report of a draft takes
    the same): trimmed, one kind of line break, within their lengths, nothing that prints as nothing or
    "?"; refused (ReviewError) in words otherwise."""
    return _category(category), _comment(comment, "comment")


def check_specimen(specimen: str | None, white_cell_count: float | None) -> None:
    """A sign-off's specimen (one of SPECIMENS, or None: not stated) with its white-cell count, as the store
    and the report of a draft take them; refused (ReviewError) in words otherwise."""
    if specimen is not None and specimen not in SPECIMENS:
        raise ReviewError(f"specimen {specimen!r}: a differential is of {' or '.join(SPECIMENS)}")
    if specimen == BONE_MARROW and white_cell_count is not None:
        # a blood count's white cells per litre say nothing of a marrow aspirate's cells
        raise ReviewError("a bone marrow differential has no absolute counts: leave the white-cell count empty "
                          "(it is a blood count's)")


def person_name(name: str, role: str) -> str:
    """The name as one form of its characters (NFC: "José" typed with a combining accent is the same
    person as "José"), refused when it holds no letter or digit (a zero-width space is no name) or a
    control character."""
    name = unicodedata.normalize("NFC", name or "").strip()
    if not any(character.isalnum() for character in name):
        raise ReviewError(f"a {role} needs the name of the person making it (with a letter or digit)")
    if len(name) > NAME_LENGTH:
        raise ReviewError(f"the {role}'s name is longer than {NAME_LENGTH} characters")
    return printable(name, f"name of the person making the {role}")


ANY_STATE = object()  # Store.review's ``seen`` when the caller showed no state (None: it showed none)


def signed_by(signoff: Signoff) -> str:
    return f"{signoff.person} on {stamp(signoff.created_at)}"


class ReviewStore:
    """The Store's review and sign-off operations (``Store`` inherits them; they use its sessions)."""

    @contextmanager
    def locked(self, analysis_id: int) -> Iterator[tuple[Session, Signoff | None]]:
        """A transaction that holds ``analysis_id`` from its first statement against every other
        review, sign-off, reopening and delete of it, so that what it reads (whether the analysis is
        signed off, a cell's label) is still true when it writes. Yields the session and the
        analysis's newest sign-off or reopening (None when never signed).

        SQLite: the database's write lock (BEGIN IMMEDIATE; a plain transaction would read first and
        then write over another's commit). MySQL: the analysis row's lock, taken before any read,
        because the first read fixes the transaction's snapshot: a sign-off committed between that
        read and the lock would not be seen."""
        with self.session() as session:
            if session.bind.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            session.execute(select(Analysis.id).where(Analysis.id == analysis_id).with_for_update())
            yield session, session.scalar(select(Signoff).where(Signoff.analysis_id == analysis_id)
                                          .order_by(Signoff.id.desc()).limit(1))

    def review(self, prediction_id: int, new_code: str, reviewer: str, *,
               seen: int | None | object = ANY_STATE) -> Review:
        """Confirm or correct a prediction; the change is kept with old and new label, who and when.
        The review returned says in ``replaced`` the cell's reviewed label it replaced (None: none),
        which Undo gives back, and in ``previous`` the id of the review it follows (None: none).

        ``seen``: the id of the cell's latest review as the page asking showed it (None: it showed the
        cell unreviewed). When someone reviewed the cell since to another label, the review is refused
        (ChangedSince): a page drawn before a colleague's correction overwrote it with a click, in silence.
        (To the label it has now, it is taken: a double click, or agreeing with the colleague.) Refused
        (AnalysisLocked) while the analysis is signed off; marked as an amendment while it is reopened.
        """
        return self._record_review(prediction_id, new_code, reviewer, seen, "look at it again", agreeing=new_code)

    def undo_review(self, prediction_id: int, restore: str | None, reviewer: str, review_id: int) -> Review:
        """Give a cell back the label it had before a review: ``restore`` is its reviewed label then,
        None when it had none, so that a mis-keyed cell is unreviewed again (not confirmed as the
        model said). ``review_id``: the review undone. When the cell was reviewed since, undoing would
        take back that change, so it is refused (ChangedSince), even when it gave the same label (a
        colleague's later confirmation was taken back when only labels were compared). The undoing is
        kept in the audit trail like any review."""
        return self._record_review(prediction_id, restore, reviewer, review_id, "undoing would take back their change",
                                   undoing=True)

    def _record_review(self, prediction_id: int, reviewed_code: str | None, reviewer: str,
                       seen: int | None | object, refused: str, agreeing: str | None = None,
                       undoing: bool = False) -> Review:
        reviewer = person_name(reviewer, "review")
        with self.session() as session:  # which analysis: it never changes, so read before the lock
            analysis_id = session.scalar(select(Prediction.analysis_id).where(Prediction.id == prediction_id))
        if analysis_id is None:
            raise NotFound(f"no prediction {prediction_id}")
        with self.locked(analysis_id) as (session, last):
            prediction = session.get(Prediction, prediction_id, options=[selectinload(Prediction.reviews)])
            if prediction is None:  # its analysis was deleted meanwhile
                raise NotFound(f"no prediction {prediction_id}")
            if last is not None and last.action == SIGNED:
                raise AnalysisLocked(f"analysis #{analysis_id} was signed off by {signed_by(last)}: "
                                     "reopen it to amend it")
            latest = prediction.reviews[-1] if prediction.reviews else None
            changed = seen is not ANY_STATE and (latest.id if latest else None) != seen
            if changed and not (agreeing and agreeing == prediction.final_code):
                done = ("given back unreviewed" if not prediction.reviewed else
                        f"confirmed as {prediction.final_code}" if latest.new_code == latest.old_code else
                        f"changed to {prediction.final_code}")
                raise ChangedSince(f"{prediction.filename} was {done} by {latest.reviewer} on "
                                  f"{stamp(latest.created_at)} since: {refused}")
            if undoing and latest is not None and last is not None and latest.reopening_id != last.id:
                # Backspace after a reopening took back a confirmation the signed record holds, and the amended
                # report listed "EOS -> EOS"
                raise ChangedSince(f"{prediction.filename}: that change was signed off before the analysis was "
                                   f"reopened (by {signed_by(last)}): Undo takes back only changes made since; "
                                   "to amend the cell, give it its type")
            review = Review(prediction_id=prediction_id, old_code=prediction.final_code,
                            new_code=reviewed_code or prediction.code, reviewer=reviewer,
                            reopening_id=last.id if last is not None else None)
            review.replaced = prediction.reviewed_code
            review.previous = latest.id if latest else None  # the review it follows (Undo puts the cell back to it)
            prediction.reviewed_code = reviewed_code
            session.add(review)
            session.flush()
            return review

    def sign_off(self, analysis_id: int, person: str, *, category: str = "", comment: str = "",
                 target: int | None = None, white_cell_count: float | None = None,
                 specimen: str | None = None) -> Signoff:
        """Sign off a finished analysis's differential: who, when, the count log's category and the
        report's comment, target, white-cell count and specimen (one of SPECIMENS, None when not
        stated). The analysis is locked until reopened."""
        person = person_name(person, "sign-off")
        category, comment = signoff_text(category, comment)
        check_specimen(specimen, white_cell_count)
        if specimen is None and white_cell_count is not None:  # "not stated" reads as a marrow's: no absolute counts
            raise ReviewError("a white-cell count gives a blood film's absolute counts: state the specimen "
                              "(peripheral blood)")
        with self.locked(analysis_id) as (session, last):
            analysis = session.get(Analysis, analysis_id)
            if analysis is None:
                raise ReviewError(f"analysis #{analysis_id} does not exist")
            if analysis.status != "done":
                raise ReviewError(f"analysis #{analysis_id} is {analysis.status}: only a finished analysis "
                                  "can be signed off")
            if last is not None and last.action == SIGNED:
                raise ReviewError(f"analysis #{analysis_id} is already signed off by {signed_by(last)}")
            signoff = Signoff(analysis_id=analysis_id, action=SIGNED, person=person, category=category,
                              comment=comment, target=target, white_cell_count=white_cell_count, specimen=specimen)
            session.add(signoff)
            session.flush()
            return signoff

    def reopen(self, analysis_id: int, person: str, reason: str) -> Signoff:
        """Reopen a signed-off analysis so that its cells can be changed again (an amendment)."""
        person = person_name(person, "reopening")
        reason = _comment(reason, "reason for reopening")
        if not any(character.isalnum() for character in reason):  # the audit trail says why (a zero-width space is no reason)
            raise ReviewError("a reopening needs its reason: it is kept with the reopening in the report")
        with self.locked(analysis_id) as (session, last):
            if last is None or last.action != SIGNED:
                raise ReviewError(f"analysis #{analysis_id} is not signed off: there is nothing to reopen")
            reopening = Signoff(analysis_id=analysis_id, action=REOPENED, person=person,
                                comment=reason)
            session.add(reopening)
            session.flush()
            return reopening

    def signoffs(self, analysis_ids: Iterable[int]) -> dict[int, list[Signoff]]:
        """Each analysis's sign-offs and reopenings, oldest first (an empty list when never signed)."""
        ids = list(analysis_ids)
        found: dict[int, list[Signoff]] = {analysis_id: [] for analysis_id in ids}
        with self.session() as session:
            for signoff in session.scalars(select(Signoff).where(Signoff.analysis_id.in_(ids)).order_by(Signoff.id)):
                found[signoff.analysis_id].append(signoff)
        return found

    def reviewers(self, analysis_ids: Iterable[int]) -> dict[int, list[str]]:
        """Who reviewed cells of each analysis, sorted. Names are told apart here, not by the database:
        MySQL's usual collations hold "José" and "jose" equal, and its DISTINCT would keep only one."""
        ids = list(analysis_ids)
        found: dict[int, set[str]] = {analysis_id: set() for analysis_id in ids}
        query = (select(Prediction.analysis_id, Review.reviewer).join(Review, Review.prediction_id == Prediction.id)
                 .where(Prediction.analysis_id.in_(ids)))
        with self.session() as session:
            for analysis_id, reviewer in session.execute(query):
                found[analysis_id].add(reviewer)
        return {analysis_id: sorted(names) for analysis_id, names in found.items()}

    def final_code_counts(self, analysis_ids: Iterable[int]) -> dict[int, Counter[str]]:
        """Cells per final label (the reviewer's where given) of each analysis, a detection's typed white
        cells among them; for a detection stored before those were kept as cells, its white cells per type
        (``signout.differential_codes``). Counted in the database: no prediction is loaded."""
        ids = list(analysis_ids)
        counts: dict[int, Counter[str]] = {analysis_id: Counter() for analysis_id in ids}
        final = func.coalesce(Prediction.reviewed_code, Prediction.code)
        queries = [select(Prediction.analysis_id, final, func.count()).where(Prediction.analysis_id.in_(ids))
                   .group_by(Prediction.analysis_id, final),
                   select(Detection.analysis_id, Detection.code, func.count())
                   .where(Detection.analysis_id.in_(ids), Detection.code.is_not(None),
                          ~select(Prediction.id).where(Prediction.analysis_id == Detection.analysis_id).exists())
                   .group_by(Detection.analysis_id, Detection.code)]
        with self.session() as session:
            for query in queries:
                for analysis_id, code, count in session.execute(query):
                    counts[analysis_id][code] += count
        return counts
