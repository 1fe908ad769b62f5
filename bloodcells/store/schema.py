"""The database schema: one typed ORM for SQLite and MySQL/MariaDB.

Image content is stored once per sha256 as a ``Blob`` split into ``BlobChunk`` rows, so that
no single statement comes near MySQL's ``max_allowed_packet`` (16 MB by default).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    and_,
    or_,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

# SQLite otherwise gives the id of the newest deleted row to the next row stored, and an id a user
# or a cache held (an analysis open in another tab, a cell's thumbnail) would then name another
# row; AUTOINCREMENT never reuses one. MySQL's AUTO_INCREMENT already does not.
IDS_NEVER_REUSED = {"sqlite_autoincrement": True}
CHUNK_SIZE = 1 << 20  # 1 MiB: far below MySQL's default 16 MB max_allowed_packet
# MEDIUMBLOB on MySQL (16 MB); a plain BLOB there holds only 64 KB.
ChunkBytes = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class CellType(Base):
    __tablename__ = "cell_types"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("cell_types.id"))
    parent: Mapped[CellType | None] = relationship(remote_side="CellType.id")


class Blob(Base):
    """Image (or other file) content, stored once whatever number of rows refer to it."""
    __tablename__ = "blobs"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(64), default="application/octet-stream")
    chunks: Mapped[list[BlobChunk]] = relationship(
        order_by="BlobChunk.seq", cascade="all, delete-orphan", lazy="raise")


class BlobChunk(Base):
    __tablename__ = "blob_chunks"
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(ChunkBytes)


class ModelType(Base):
    """An architecture (a timm or ultralytics model name)."""
    __tablename__ = "model_types"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    architecture: Mapped[str] = mapped_column(String(128), unique=True)
    family: Mapped[str] = mapped_column(String(32), default="classifier")


class ModelCellType(Base):
    """Which cell types a model outputs (its classes)."""
    __tablename__ = "model_cell_types"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    cell_type_id: Mapped[int] = mapped_column(ForeignKey("cell_types.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Model(Base):
    """Trained weights: one node of a classifier tree, or a detector."""
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("sha256", name="uq_models_sha256"), IDS_NEVER_REUSED)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "classifier" | "detector" | "attributes"
    tree: Mapped[str | None] = mapped_column(String(64))
    node_code: Mapped[str | None] = mapped_column(String(16))
    model_type_id: Mapped[int] = mapped_column(ForeignKey("model_types.id"))
    weights_path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    model_type: Mapped[ModelType] = relationship()
    cell_types: Mapped[list[CellType]] = relationship(secondary="model_cell_types", viewonly=True)


# A process storing an analysis records a sign of life (``heartbeat_at``) every HEARTBEAT; one silent
# for SILENT_AFTER has died (a killed app server, a power cut) and its analysis is no longer running.
HEARTBEAT = timedelta(seconds=60)
SILENT_AFTER = 5 * HEARTBEAT
# Analyses stored by a bloodcells before heartbeats (heartbeat_at empty): running for at most this long.
LONGEST_ANALYSIS = timedelta(days=1)


class Analysis(Base):
    """One upload and what was computed from it."""
    __tablename__ = "analyses"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32))  # "classification" | "detection"
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|done|failed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)  # the storing process's last sign of life
    model_versions: Mapped[dict] = mapped_column(JSON, default=dict)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", order_by="Prediction.id")
    detections: Mapped[list[Detection]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", order_by="Detection.id")
    signoffs: Mapped[list[Signoff]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", order_by="Signoff.id")

    @hybrid_property
    def being_stored(self) -> bool:
        """Still running in some process (not one left ``running`` by a process that died)."""
        now = utcnow()
        if self.heartbeat_at is None:
            return self.status == "running" and self.created_at > now - LONGEST_ANALYSIS
        return self.status == "running" and self.heartbeat_at > now - SILENT_AFTER

    @being_stored.inplace.expression
    @classmethod
    def _being_stored(cls) -> ColumnElement[bool]:
        now = utcnow()
        # no comparison with NULL: its negation (not being stored) must be true or false too
        return and_(cls.status == "running", or_(
            and_(cls.heartbeat_at.is_not(None), cls.heartbeat_at > now - SILENT_AFTER),
            and_(cls.heartbeat_at.is_(None), cls.created_at > now - LONGEST_ANALYSIS)))

    @property
    def signed_off(self) -> Signoff | None:
        """The sign-off in force (the analysis is locked), or None when never signed or reopened since."""
        last = self.signoffs[-1] if self.signoffs else None
        return last if last is not None and last.action == SIGNED else None


class Prediction(Base):
    """The tree's answer for one cell image of an analysis."""
    __tablename__ = "predictions"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"))
    filename: Mapped[str] = mapped_column(String(512))
    code: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(255))
    confidence: Mapped[float] = mapped_column(Float)
    level_confidences: Mapped[dict] = mapped_column(JSON, default=dict)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    reviewed_code: Mapped[str | None] = mapped_column(String(16))
    # What the image is, not where it is stored: caches of images (thumbnails, explanations) are
    # keyed by it, so the same image in several analyses is one entry.
    image_sha256: Mapped[str | None] = column_property(
        select(Blob.sha256).where(Blob.id == blob_id).correlate_except(Blob).scalar_subquery())
    analysis: Mapped[Analysis] = relationship(back_populates="predictions")
    reviews: Mapped[list[Review]] = relationship(
        back_populates="prediction", cascade="all, delete-orphan", order_by="Review.id")

    @property
    def final_code(self) -> str:
        return self.reviewed_code or self.code

    @property
    def reviewed(self) -> bool:
        """A person has given this cell its label (an undone review leaves it unreviewed again)."""
        return self.reviewed_code is not None

    @property
    def last_review_id(self) -> int | None:
        """Its latest review's id (None: never reviewed): what a page shows, for ``Store.review``'s ``seen``."""
        return self.reviews[-1].id if self.reviews else None


class Review(Base):
    """One correction or confirmation by a lab user; never overwritten."""
    __tablename__ = "reviews"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    old_code: Mapped[str] = mapped_column(String(16))
    new_code: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # the reopening this change was made under: set for the amendments of a signed-off analysis
    # (an id, not a time, tells them apart: MySQL's DATETIME keeps whole seconds)
    reopening_id: Mapped[int | None] = mapped_column(ForeignKey("signoffs.id", ondelete="CASCADE"))
    prediction: Mapped[Prediction] = relationship(back_populates="reviews")
    # Not stored: the cell's reviewed label that this review replaced (None: it had none), as the database
    # held it, for Undo: a page drawn before a colleague's review held a stale one, and undoing restored it
    # over their change.
    replaced = None


SIGNED, REOPENED = "signed", "reopened"
# what was sampled, as a sign-off records it: the report counts erythroblasts in a marrow's differential
# (and gives its myeloid:erythroid ratio) but apart from a blood film's white cells, per 100 of them
BONE_MARROW, PERIPHERAL_BLOOD = "bone marrow", "peripheral blood"
SPECIMENS = (BONE_MARROW, PERIPHERAL_BLOOD)


class Signoff(Base):
    """A person signing off an analysis's differential (it is locked) or reopening it to amend it."""
    __tablename__ = "signoffs"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # SIGNED | REOPENED
    person: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    category: Mapped[str] = mapped_column(String(128), default="")  # for the count log; never a patient
    comment: Mapped[str] = mapped_column(Text, default="")  # the report's comment, or why it was reopened
    target: Mapped[int | None] = mapped_column(Integer)  # cells to count (100/200/400) when signed
    white_cell_count: Mapped[float | None] = mapped_column(Float)  # 10^9/L, when given for absolute counts
    specimen: Mapped[str | None] = mapped_column(String(32))  # one of SPECIMENS; None: not stated (before 0007)
    analysis: Mapped[Analysis] = relationship(back_populates="signoffs")


class Detection(Base):
    """One box found on a smear field; white cells also carry the tree's answer."""
    __tablename__ = "detections"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    class_code: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Double)  # MySQL's FLOAT read 1235.4971 back as 1235.5 (migration 0008)
    y1: Mapped[float] = mapped_column(Double)
    x2: Mapped[float] = mapped_column(Double)
    y2: Mapped[float] = mapped_column(Double)
    code: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(String(255))
    sub_confidence: Mapped[float | None] = mapped_column(Float)
    analysis: Mapped[Analysis] = relationship(back_populates="detections")


class Explanation(Base):
    """A cached attribution map, keyed by what determines it."""
    __tablename__ = "explanations"
    __table_args__ = (UniqueConstraint("model_sha256", "image_sha256", "method", "settings_key",
                                       name="uq_explanations_key"), IDS_NEVER_REUSED)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    image_sha256: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    settings_key: Mapped[str] = mapped_column(String(255))
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


CANDIDATE, ACCEPTED, DISCARDED = "candidate", "accepted", "discarded"


class ModelVersion(Base):
    """A tree of models made from the app (adapted to the lab, or trained): what it came from, who
    made it, its figures before and after, and whether it was accepted (then the version id it got)."""
    __tablename__ = "model_versions"
    __table_args__ = IDS_NEVER_REUSED
    id: Mapped[int] = mapped_column(primary_key=True)
    tree: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "adapted" | "trained"
    folder: Mapped[str] = mapped_column(String(512))  # where it was written (a candidate until accepted)
    version: Mapped[str | None] = mapped_column(String(64))  # bloodcells.versions id, once accepted
    status: Mapped[str] = mapped_column(String(16), default=CANDIDATE)  # CANDIDATE | ACCEPTED | DISCARDED
    base: Mapped[dict] = mapped_column(JSON, default=dict)  # sha256 of each network it started from
    cells: Mapped[int] = mapped_column(Integer, default=0)  # labelled cells it learnt from
    analyses: Mapped[list] = mapped_column(JSON, default=list)  # the analyses whose reviewed cells those were
    figures: Mapped[dict] = mapped_column(JSON, default=dict)  # accuracy before and after
    started_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
