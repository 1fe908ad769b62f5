"""MySQL/MariaDB: a detected box's corners in double precision

SQLAlchemy's Float is MySQL's single-precision FLOAT, which MariaDB reads back to about six significant
digits: a box from x = 1235.4971 came back at 1235.5, so the white cell stored as "f.jpg · white cell at
(1235, 80)" was looked for as "(1236, 80)" and its reviewed type was missing from the detection CSV and
the drawn field. DOUBLE keeps the corners as found (the float32 values already stored convert exactly).
SQLite keeps every real in 8 bytes whatever the declared type: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 03:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

CORNERS = ('x1', 'y1', 'x2', 'y2')


def _corners(new_type, old_type) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for column in CORNERS:
        op.alter_column('detections', column, type_=new_type, existing_type=old_type, existing_nullable=False)


def upgrade() -> None:
    _corners(sa.Double(), sa.Float())


def downgrade() -> None:
    _corners(sa.Float(), sa.Double())
