"""Lineage of model trees made from the app: recorded when made, then accepted or discarded once."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from .reviews import ReviewError, person_name
from .schema import ACCEPTED, CANDIDATE, DISCARDED, ModelVersion, utcnow


class LineageStore:
    """The Store's model-lineage operations (``Store`` inherits them; they use its sessions)."""

    def record_model_version(self, *, tree: str, kind: str, folder: str, base: dict, cells: int,
                             analyses: Sequence[int], figures: dict, started_by: str, started_at=None) -> int:
        """A new candidate tree; returns its id."""
        row = ModelVersion(tree=tree, kind=kind, folder=folder, base=base, cells=cells, analyses=list(analyses),
                           figures=figures, started_by=person_name(started_by, "new model version"),
                           started_at=started_at or utcnow(), status=CANDIDATE)
        with self.session() as session:
            session.add(row)
            session.flush()
            return row.id

    def decide_model_version(self, model_version_id: int, status: str, person: str,
                             version: str | None = None) -> ModelVersion:
        """Accept (with the ``version`` id it got) or discard a candidate; a decision is made once."""
        if status not in (ACCEPTED, DISCARDED):
            raise ReviewError(f"a model version is accepted or discarded, not {status!r}")
        if status == ACCEPTED and not version:
            raise ReviewError("an accepted model version needs the version id it was given")
        person = person_name(person, "decision on a model version")
        with self.session() as session:
            row = session.get(ModelVersion, model_version_id, with_for_update=True)
            if row is None:
                raise ReviewError(f"there is no model version #{model_version_id}")
            if row.status != CANDIDATE:
                raise ReviewError(f"model version #{model_version_id} was already {row.status} by {row.decided_by}")
            row.status, row.version, row.decided_by, row.decided_at = status, version, person, utcnow()
            session.flush()
            session.expunge(row)
            return row

    def get_model_version(self, model_version_id: int) -> ModelVersion:
        with self.session() as session:
            row = session.get(ModelVersion, model_version_id)
            if row is None:
                raise ReviewError(f"there is no model version #{model_version_id}")
            session.expunge(row)
            return row

    def list_model_versions(self, tree: str | None = None) -> list[ModelVersion]:
        """Newest first."""
        query = select(ModelVersion).order_by(ModelVersion.id.desc())
        if tree is not None:
            query = query.where(ModelVersion.tree == tree)
        with self.session() as session:
            rows = list(session.scalars(query))
            session.expunge_all()
            return rows
