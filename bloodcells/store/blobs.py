"""Content stored once per sha256 (cells' images, explanation maps), and the images that nothing
refers to any more (a deleted or failed analysis's)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from .errors import NotFound, StoreError
from .rows import sha256_hex
from .schema import CHUNK_SIZE, Analysis, Blob, BlobChunk, Explanation, Prediction

_log = logging.getLogger(__name__)
_DEADLOCK_RETRIES = 3
_MYSQL_DEADLOCK = 1213


class BlobStore:
    """Blobs and the explanation maps cached in them; mixed into ``Store`` (which gives ``session``)."""

    def put_blob(self, session: Session, content: bytes, media_type: str = "image") -> Blob:
        """The blob holding ``content``, written once per sha256 (in chunks of 1 MiB).

        Safe when sessions store the same content at once: the insert is ignored when another
        transaction wrote that sha256 first (MySQL waits for it to commit; SQLite has one writer),
        the locking read then sees it, and only the transaction that inserted it adds the chunks.
        """
        digest = sha256_hex(content)
        blob = session.scalar(select(Blob).where(Blob.sha256 == digest))
        if blob is not None:
            return blob
        inserted = session.connection().execute(
            _insert_or_ignore(Blob, sha256=digest, size=len(content), media_type=media_type)).rowcount
        blob = session.scalar(select(Blob).where(Blob.sha256 == digest).with_for_update(read=True)
                              .execution_options(populate_existing=True))
        if inserted:
            for seq, start in enumerate(range(0, max(len(content), 1), CHUNK_SIZE)):
                session.add(BlobChunk(blob_id=blob.id, seq=seq, data=content[start:start + CHUNK_SIZE]))
            session.flush()
        return blob

    def put_blobs(self, contents: dict[str, bytes]) -> dict[str, int]:
        """Store ``{sha256: content}`` in a transaction of its own; returns ``{sha256: blob id}``.

        Written in sha256 order, so that concurrent writers take their locks in one order; a
        MySQL deadlock all the same is retried (the transaction is short and holds nothing else).
        """
        attempts = 0
        while True:
            try:
                with self.session() as session:
                    return {digest: self.put_blob(session, contents[digest]).id for digest in sorted(contents)}
            except StoreError as error:
                attempts += 1
                if attempts == _DEADLOCK_RETRIES or not _is_deadlock(error.__cause__):
                    raise

    def read_blob(self, blob_id: int | None = None, sha256: str | None = None) -> bytes:
        with self.session() as session:
            query = select(Blob.id, Blob.size)
            query = query.where(Blob.id == blob_id) if blob_id is not None else query.where(Blob.sha256 == sha256)
            found = session.execute(query).first()
            if found is None:
                raise NotFound(f"no stored content {blob_id or sha256}")
            parts = session.scalars(select(BlobChunk.data).where(BlobChunk.blob_id == found.id)
                                    .order_by(BlobChunk.seq))
            content = b"".join(parts)
        if len(content) != found.size:
            raise StoreError(f"stored content {sha256 or blob_id} is incomplete "
                             f"({len(content)} of {found.size} bytes)")
        return content

    # -- explanations ----------------------------------------------------------------------
    def get_explanation(self, *, model_sha256: str, image_sha256: str, method: str, settings_key: str) -> bytes | None:
        """The content of the attribution map cached under this key, or None."""
        with self.session() as session:
            blob_id = session.scalar(select(Explanation.blob_id).where(
                Explanation.model_sha256 == model_sha256, Explanation.image_sha256 == image_sha256,
                Explanation.method == method, Explanation.settings_key == settings_key))
        return None if blob_id is None else self.read_blob(blob_id=blob_id)

    def put_explanation(self, content: bytes, *, model_sha256: str, image_sha256: str, method: str,
                        settings_key: str) -> None:
        """Cache an attribution map's ``content`` under its key; a map stored first under that key is kept.

        Two processes explaining the same cell at once both get here after a cache miss: the row is
        inserted or ignored on its unique key, so neither fails (as in ``put_blob``).
        """
        with self.session() as session:
            blob = self.put_blob(session, content, media_type="application/x-npy")
            session.connection().execute(_insert_or_ignore(
                Explanation, model_sha256=model_sha256, image_sha256=image_sha256, method=method,
                settings_key=settings_key, blob_id=blob.id))

    def collect_unreferenced_images(self) -> None:
        """``_delete_unreferenced_images`` in a transaction of its own, after the one that left them (a finished,
        failed or deleted analysis). Inside that one, which holds its analysis's row, the locking count below
        deadlocked with another such transaction (two runs finishing at once: MariaDB 1213, and one analysis was
        lost). A collection that fails (a deadlock with another collection, the database gone) is left to the
        next one: nothing refers to those images."""
        try:
            with self.session() as session:
                self._delete_unreferenced_images(session)
        except StoreError as error:
            _log.warning("unreferenced images left for the next collection: %s", error)

    def _delete_unreferenced_images(self, session: Session) -> None:
        """Delete the cells' images that no prediction refers to any more, with the explanation maps
        cached for them: a deleted analysis takes its cells' images out of the database, and a failed
        one the images it had stored.

        Skipped while an analysis is being stored: ``finish_analysis`` stores its images before the
        rows that refer to them, so one of these may be about to be referred to again (the same zip
        classified twice). What is skipped is collected by the next analysis to finish, fail or be
        deleted once none is running. An analysis left ``running`` by a process that died (silent
        for ``SILENT_AFTER``) does not count.

        MySQL: the count is a locking read, the transaction's first statement. Read in the snapshot of a
        delete begun earlier, it missed an analysis started since (the same zip classified again while its old
        analysis was being deleted), whose images, found stored, were deleted under it (its rows then failed on
        their foreign key). The locking read sees every analysis started before it, and holds back one started
        after it until this transaction commits (which then stores its images anew)."""
        if session.scalar(select(func.count()).select_from(Analysis).where(Analysis.being_stored)
                          .with_for_update(read=True)):
            return
        referred = select(Prediction.blob_id).where(Prediction.blob_id.is_not(None))
        orphans = list(session.scalars(select(Blob.id).where(Blob.media_type == "image", Blob.id.not_in(referred))))
        digests = [digest for batch in _batches(orphans)
                   for digest in session.scalars(select(Blob.sha256).where(Blob.id.in_(batch)))]
        maps: set[int] = set()
        for batch in _batches(digests):
            maps.update(session.scalars(select(Explanation.blob_id).where(Explanation.image_sha256.in_(batch))))
            session.execute(delete(Explanation).where(Explanation.image_sha256.in_(batch)))
        shared_maps = {blob_id for batch in _batches(sorted(maps)) for blob_id in session.scalars(
            select(Explanation.blob_id).where(Explanation.blob_id.in_(batch)))}  # the same map of another image
        for batch in _batches(orphans + sorted(maps - shared_maps)):
            session.execute(delete(BlobChunk).where(BlobChunk.blob_id.in_(batch)))
            session.execute(delete(Blob).where(Blob.id.in_(batch)))


def _batches(values: list, size: int = 500) -> Iterator[list]:
    """``values`` in lists of at most ``size``: the bound parameters of one IN (...)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _insert_or_ignore(table, **values):
    """An INSERT that does nothing when a unique key already holds the row (another writer was first)."""
    return (insert(table).values(**values).prefix_with("OR IGNORE", dialect="sqlite")
            .prefix_with("IGNORE", dialect="mysql").prefix_with("IGNORE", dialect="mariadb"))


def _is_deadlock(error: BaseException | None) -> bool:
    orig = getattr(error, "orig", None)
    return bool(getattr(orig, "args", None)) and orig.args[0] == _MYSQL_DEADLOCK
