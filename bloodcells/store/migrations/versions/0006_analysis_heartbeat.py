"""a running analysis's last sign of life

An app server killed outside Python's reach (SIGKILL, the machine lost power) left its analysis
"running" for a day: undeletable, shown as running, holding back the clean-up of deleted images.
The process storing an analysis now records a sign of life every minute; one silent for five
minutes has stopped. Analyses stored before this revision have none and keep the rule of a day.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 18:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('analyses') as batch:
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table: keep its ids never reused (0005)
    with op.batch_alter_table('analyses', table_kwargs={'sqlite_autoincrement': True}) as batch:
        batch.drop_column('heartbeat_at')
