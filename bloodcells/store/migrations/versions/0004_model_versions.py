"""lineage of the model trees made from the app

A tree adapted to the lab (or trained) from the app is a candidate until someone accepts it (it
gets a version id and every page uses it) or discards it: who started it, from which base
networks (sha256) and analyses, on how many cells, the figures before and after, who decided.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 21:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tree', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('folder', sa.String(length=512), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('base', sa.JSON(), nullable=False),
    sa.Column('cells', sa.Integer(), nullable=False),
    sa.Column('analyses', sa.JSON(), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=False),
    sa.Column('started_by', sa.String(length=128), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('decided_by', sa.String(length=128), nullable=True),
    sa.Column('decided_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('model_versions')
