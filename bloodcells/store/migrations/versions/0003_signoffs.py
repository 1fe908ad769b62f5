"""sign-offs of analyses, and which reopening a review amended

A sign-off records who signed an analysis's differential, when, with the category and comment of
the count log (and the target and white-cell count of its report); the analysis is then locked
until someone reopens it, which is recorded the same way. A review made while it is reopened
carries that reopening's id: it is an amendment.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signoffs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('analysis_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('person', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('category', sa.String(length=128), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('target', sa.Integer(), nullable=True),
    sa.Column('white_cell_count', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['analysis_id'], ['analyses.id'], name='fk_signoffs_analysis_id', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_signoffs_analysis_id', 'signoffs', ['analysis_id'], unique=False)
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reopening_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_reviews_reopening_id', 'signoffs', ['reopening_id'], ['id'],
                                    ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_constraint('fk_reviews_reopening_id', type_='foreignkey')
        batch_op.drop_column('reopening_id')
    op.drop_table('signoffs')  # its index goes with it (MySQL refuses to drop one a foreign key uses)
