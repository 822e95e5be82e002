"""jobs.spec: the training specification, resolved once and frozen with the job; files.expires_at

Revision ID: 0002_spec
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_spec'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spec', sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('spec')
