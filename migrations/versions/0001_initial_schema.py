"""Initial schema: organizations, numbers, contacts, campaigns, recipients, webhook events.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 22:27:57.316464
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('organizations',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('webhook_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('state', sa.Text(), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_events_pending', 'webhook_events', ['id'], unique=False, postgresql_where=sa.text("state = 'pending'"))
    op.create_table('contacts',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('phone', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('tags', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('opted_out_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_inbound_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('in_conversation', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_contacts_org_phone', 'contacts', ['organization_id', 'phone'], unique=False)
    op.create_index('ix_contacts_tags', 'contacts', ['tags'], unique=False, postgresql_using='gin')
    op.create_table('whatsapp_numbers',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('phone_number_id', sa.Text(), nullable=False),
    sa.Column('display_phone_number', sa.Text(), nullable=True),
    sa.Column('block_name', sa.Text(), nullable=False),
    sa.Column('mps', sa.Integer(), server_default='80', nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("provider in ('meta_cloud', 'evolution', 'sandbox')", name='provider_known'),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('organization_id', 'phone_number_id')
    )
    op.create_table('campaigns',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('campaign_type', sa.Text(), server_default='broadcast', nullable=False),
    sa.Column('whatsapp_number_id', sa.UUID(), nullable=False),
    sa.Column('message_type', sa.Text(), nullable=False),
    sa.Column('message_content', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('template_variables', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('audience_type', sa.Text(), nullable=False),
    sa.Column('audience_filter', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('messages_per_hour', sa.Integer(), nullable=True),
    sa.Column('delay_between_messages_seconds', sa.Float(), server_default='2', nullable=False),
    sa.Column('retry_max_attempts', sa.Integer(), server_default='3', nullable=False),
    sa.Column('retry_base_delay', sa.Integer(), server_default='60', nullable=False),
    sa.Column('retry_max_delay', sa.Integer(), server_default='3600', nullable=False),
    sa.Column('respect_opt_out', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('skip_active_conversations', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.Text(), server_default='draft', nullable=False),
    sa.Column('paused_reason', sa.Text(), nullable=True),
    sa.Column('resume_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('total_recipients', sa.Integer(), server_default='0', nullable=False),
    sa.Column('audience_frozen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_message', sa.Text(), nullable=True),
    sa.Column('error_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('flow_run_id', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status in ('draft','scheduled','running','paused','completed','cancelled','failed')", name='campaign_status_known'),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['whatsapp_number_id'], ['whatsapp_numbers.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_campaigns_due', 'campaigns', ['scheduled_at'], unique=False, postgresql_where=sa.text("status = 'scheduled'"))
    op.create_index('ix_campaigns_org_status', 'campaigns', ['organization_id', 'status'], unique=False)
    op.create_table('campaign_recipients',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('phone', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('skip_reason', sa.Text(), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('attempt_log', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wamid', sa.Text(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('replied_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_recipients_campaign_status_id', 'campaign_recipients', ['campaign_id', 'status', 'id'], unique=False)
    op.create_index('ux_recipients_wamid', 'campaign_recipients', ['wamid'], unique=True, postgresql_where=sa.text('wamid is not null'))


def downgrade() -> None:
    op.drop_index('ux_recipients_wamid', table_name='campaign_recipients', postgresql_where=sa.text('wamid is not null'))
    op.drop_index('ix_recipients_campaign_status_id', table_name='campaign_recipients')
    op.drop_table('campaign_recipients')
    op.drop_index('ix_campaigns_org_status', table_name='campaigns')
    op.drop_index('ix_campaigns_due', table_name='campaigns', postgresql_where=sa.text("status = 'scheduled'"))
    op.drop_table('campaigns')
    op.drop_table('whatsapp_numbers')
    op.drop_index('ix_contacts_tags', table_name='contacts', postgresql_using='gin')
    op.drop_index('ix_contacts_org_phone', table_name='contacts')
    op.drop_table('contacts')
    op.drop_index('ix_webhook_events_pending', table_name='webhook_events', postgresql_where=sa.text("state = 'pending'"))
    op.drop_table('webhook_events')
    op.drop_table('organizations')
