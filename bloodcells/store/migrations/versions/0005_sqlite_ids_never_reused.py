"""SQLite: ids are never reused (AUTOINCREMENT)

Without AUTOINCREMENT SQLite gives the id of the newest deleted row to the next row stored, so an
analysis deleted in History handed its id to the next upload, and an id held elsewhere (another
user's page, a cache) named a different analysis or cell. MySQL/MariaDB's AUTO_INCREMENT never
reuses ids: nothing to do there. SQLite can only add AUTOINCREMENT by rebuilding each table (its
rows, indexes and foreign keys are copied; env.py turns foreign key enforcement off meanwhile).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:30:00
"""

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# every table whose primary key is a single integer id
TABLES = ('cell_types', 'blobs', 'model_types', 'models', 'analyses', 'predictions', 'reviews', 'signoffs',
          'detections', 'explanations', 'model_versions')


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
