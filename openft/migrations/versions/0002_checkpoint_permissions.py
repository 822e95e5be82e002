"""checkpoint permissions: fine-tuned models shared with other organizations

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoint_permissions',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('organization_id', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.Text(), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('checkpoint_permissions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoint_permissions_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoint_permissions_model_name'), ['model_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoint_permissions_project_id'), ['project_id'], unique=False)


def downgrade() -> None:
    op.drop_table('checkpoint_permissions')
