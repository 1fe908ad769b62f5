"""drop the unused cells table and detections.blob_id

Nothing ever wrote or read them: labelled cells are class-folder zips, not rows, and a detection's
image is its analysis's upload, never a blob of its own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table('cells')
    # 0001 left the foreign key unnamed: MySQL named it (detections_ibfk_N) and must drop it before the
    # column; SQLite reports no name and drops it with the column when batch mode copies the table.
    names = [key['name'] for key in sa.inspect(op.get_bind()).get_foreign_keys('detections')
             if key['constrained_columns'] == ['blob_id'] and key['name']]
    with op.batch_alter_table('detections', schema=None) as batch_op:
        for name in names:
            batch_op.drop_constraint(name, type_='foreignkey')
        batch_op.drop_column('blob_id')


def downgrade() -> None:
    with op.batch_alter_table('detections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('blob_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_detections_blob_id', 'blobs', ['blob_id'], ['id'])
    op.create_table('cells',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blob_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=255), nullable=False),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['blob_id'], ['blobs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
