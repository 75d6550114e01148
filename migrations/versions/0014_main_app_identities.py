"""The main app's identities (#12): organizations.external_id (a JWT's `org` claim), an optional expiry on
opaque API tokens, and audit_log (who did what through the API).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 05:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('organizations', sa.Column('external_id', sa.Text(), nullable=True))
    op.create_unique_constraint('organizations_external_id_key', 'organizations', ['external_id'])
    op.add_column('api_tokens', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'audit_log',
        sa.Column('id', sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column('organization_id', UUID(as_uuid=True), nullable=False),
        sa.Column('campaign_id', UUID(as_uuid=True), nullable=True),
        sa.Column('number_id', UUID(as_uuid=True), nullable=True),
        sa.Column('actor', sa.Text(), nullable=False),
        sa.Column('role', sa.Text(), nullable=False),
        sa.Column('action', sa.Text(), nullable=False),
        sa.Column('details', JSONB(), server_default='{}', nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    )
    op.create_index('ix_audit_log_campaign', 'audit_log', ['campaign_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_audit_log_campaign', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_column('api_tokens', 'expires_at')
    op.drop_constraint('organizations_external_id_key', 'organizations', type_='unique')
    op.drop_column('organizations', 'external_id')
