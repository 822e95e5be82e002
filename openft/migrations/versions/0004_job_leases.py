"""job leases: several API replicas share one database, each job driven by one replica at a time

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker_host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('lease_expires', sa.Float(), nullable=True))
        batch_op.create_index('ix_jobs_status_cancel_seq', ['status', 'cancel_requested_at', 'seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_cancel_seq')
        batch_op.drop_column('lease_expires')
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('worker_host')
