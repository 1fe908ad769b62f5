"""the specimen a sign-off is for

A blood film's report counted its erythroblasts among the white cells and printed a myeloid:erythroid
ratio, a marrow's figure: the report did not know what was sampled. A sign-off now records it (bone
marrow or peripheral blood); sign-offs made before this revision have none ("not stated") and their
reports read as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signoffs') as batch:
        batch.add_column(sa.Column('specimen', sa.String(length=32), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table: keep its ids never reused (0005)
    with op.batch_alter_table('signoffs', table_kwargs={'sqlite_autoincrement': True}) as batch:
        batch.drop_column('specimen')
