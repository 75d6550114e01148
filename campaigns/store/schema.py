"""Tables (SQLAlchemy Core). Alembic migrations create them; this module is how code names them.

Every row carries organization_id so that every query can be scoped by tenant.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

INT4_MAX = 2**31 - 1  # Postgres `integer`: caps, error codes
INT8_MAX = 2**63 - 1  # Postgres `bigint`: recipient and event ids

metadata = sa.MetaData()

_now = sa.text("now()")
_uuid = sa.text("gen_random_uuid()")

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=_uuid),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    # The main app's own id for it (a JWT's `org` claim): created on that claim's first use.
    sa.Column("external_id", sa.Text, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

business_portfolios = sa.Table(
    "business_portfolios",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=_uuid),
    sa.Column("organization_id", UUID(as_uuid=True), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    # Meta's messaging limit: 250, 2,000, 10,000, 100,000 unique recipients per moving 24 h; null = unlimited.
    sa.Column("unique_recipients_24h", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.UniqueConstraint("organization_id", "name"),
)

whatsapp_numbers = sa.Table(
    "whatsapp_numbers",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=_uuid),
    sa.Column("organization_id", UUID(as_uuid=True), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("phone_number_id", sa.Text, nullable=False),
    sa.Column("display_phone_number", sa.Text),
    sa.Column("block_name", sa.Text, nullable=False),
    sa.Column("mps", sa.Integer, nullable=False, server_default="80"),
    # Optional caps in fixed UTC windows (null = no cap); see campaigns.sending.ratelimit.number_caps.
    sa.Column("per_minute", sa.Integer),
    sa.Column("per_hour", sa.Integer),
    sa.Column("per_day", sa.Integer),
    sa.Column("portfolio_id", UUID(as_uuid=True), sa.ForeignKey("business_portfolios.id")),
    # Fingerprint of the secret that signs this number's webhooks (campaigns.signers); null = platform app.
    sa.Column("webhook_signer", sa.Text),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.UniqueConstraint("organization_id", "phone_number_id"),
    sa.CheckConstraint("provider in ('meta_cloud', 'evolution', 'sandbox')", name="provider_known"),
)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=_uuid),
    sa.Column("organization_id", UUID(as_uuid=True), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("phone", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("tags", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("attributes", JSONB, nullable=False, server_default="{}"),
    sa.Column("opted_out_at", sa.DateTime(timezone=True)),
    sa.Column("opt_out_source", sa.Text),  # import, user_preferences, keyword, 131050
    sa.Column("opt_out_changed_at", sa.DateTime(timezone=True)),  # the user's latest stop/resume wins
    sa.Column("last_inbound_at", sa.DateTime(timezone=True)),
    sa.Column("in_conversation", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("ix_contacts_org_phone", "organization_id", "phone"),
    sa.Index("ix_contacts_tags", "tags", postgresql_using="gin"),
)

CAMPAIGN_STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled", "failed")

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=_uuid),
    sa.Column("organization_id", UUID(as_uuid=True), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("campaign_type", sa.Text, nullable=False, server_default="broadcast"),
    sa.Column("whatsapp_number_id", UUID(as_uuid=True), sa.ForeignKey("whatsapp_numbers.id"), nullable=False),
    sa.Column("message_type", sa.Text, nullable=False),
    sa.Column("message_content", JSONB, nullable=False),
    sa.Column("template_variables", JSONB, nullable=False, server_default="{}"),
    sa.Column("audience_type", sa.Text, nullable=False),
    sa.Column("audience_filter", JSONB, nullable=False, server_default="{}"),
    sa.Column("messages_per_hour", sa.Integer),
    sa.Column("delay_between_messages_seconds", sa.Float, nullable=False, server_default="2"),
    sa.Column("retry_max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("retry_base_delay", sa.Integer, nullable=False, server_default="60"),
    sa.Column("retry_max_delay", sa.Integer, nullable=False, server_default="3600"),
    sa.Column("respect_opt_out", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("skip_active_conversations", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("scheduled_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.Text, nullable=False, server_default="draft"),
    sa.Column("paused_reason", sa.Text),
    sa.Column("resume_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("total_recipients", sa.Integer, nullable=False, server_default="0"),
    sa.Column("audience_frozen_at", sa.DateTime(timezone=True)),
    sa.Column("last_error_message", sa.Text),
    sa.Column("error_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),  # circuit breaker
    sa.Column("provider_down_since", sa.DateTime(timezone=True)),  # waiting for its provider (outage.py)
    sa.Column("provider_probe_at", sa.DateTime(timezone=True)),  # ...until then, then one message tries it
    sa.Column("relaunches", sa.SmallInteger, nullable=False, server_default="0"),  # runner lost, in a row
    sa.Column("flow_run_id", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("ix_campaigns_org_status", "organization_id", "status"),
    sa.Index("ix_campaigns_due", "scheduled_at", postgresql_where=sa.text("status = 'scheduled'")),
    sa.CheckConstraint(
        "status in ('draft','scheduled','running','paused','completed','cancelled','failed')",
        name="campaign_status_known",
    ),
)

RECIPIENT_STATUSES = ("pending", "sending", "sent", "delivered", "read", "failed", "skipped", "cancelled")

campaign_recipients = sa.Table(
    "campaign_recipients",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    # No foreign keys here on purpose: a per-row RI check doubled the COPY of a 1,000,000-row audience
    # (10.8 s → 4.7 s without). Rows are written only by the audience step, for a campaign that exists,
    # and campaigns are never deleted (cancel is a status).
    sa.Column("campaign_id", UUID(as_uuid=True), nullable=False),
    sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
    sa.Column("contact_id", UUID(as_uuid=True), nullable=False),
    sa.Column("phone", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("skip_reason", sa.Text),
    sa.Column("error_code", sa.Integer),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempt_log", JSONB, nullable=False, server_default="[]"),
    sa.Column("rate_tries", sa.SmallInteger, nullable=False, server_default="0"),  # rate refusals so far
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    # Set (in bulk, committed) just before the row's request may leave; null in `sending` = claimed, never
    # sent, so recovery requeues it at once instead of waiting for a status webhook (reconcile.py).
    sa.Column("in_flight_at", sa.DateTime(timezone=True)),
    sa.Column("wamid", sa.Text),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("read_at", sa.DateTime(timezone=True)),
    sa.Column("failed_at", sa.DateTime(timezone=True)),
    sa.Column("replied_at", sa.DateTime(timezone=True)),
    # Serves the batch claim (status='pending' order by id), stats by status and progress, index-only.
    # (campaign_id, contact_id) is unique by construction: the audience is written once, deduplicated.
    sa.Index("ix_recipients_campaign_status_id", "campaign_id", "status", "id"),
    sa.Index("ux_recipients_wamid", "wamid", unique=True, postgresql_where=sa.text("wamid is not null")),
    # Statistics breakdowns without reading the whole campaign (migration 0008, bench/stats.py).
    sa.Index(
        "ix_recipients_campaign_skipped", "campaign_id", "skip_reason", postgresql_where=sa.text("status = 'skipped'")
    ),
    sa.Index(
        "ix_recipients_campaign_failed", "campaign_id", "error_code", postgresql_where=sa.text("status = 'failed'")
    ),
    sa.Index("ix_recipients_campaign_replied", "campaign_id", "id", postgresql_where=sa.text("replied_at is not null")),
    sa.Index(
        "ix_recipients_campaign_recent",
        "campaign_id",
        sa.text("coalesce(sent_at, failed_at)"),
        postgresql_where=sa.text("coalesce(sent_at, failed_at) is not null"),
    ),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("signers", ARRAY(sa.Text)),  # who vouched for it: it may only touch those signers' numbers
    sa.Column("payload", JSONB),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_at", sa.DateTime(timezone=True)),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Index("ix_webhook_events_pending", "id", postgresql_where=sa.text("state = 'pending'")),
    sa.Index("ix_webhook_events_received_brin", "received_at", postgresql_using="brin"),  # retention
)

API_ROLES = ("org_admin", "agent", "viewer")

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=_uuid),
    sa.Column("organization_id", UUID(as_uuid=True), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    # sha256 of the bearer token: the token itself is shown once by the CLI and never stored.
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),  # none: until revoked
    sa.CheckConstraint("role in ('org_admin', 'agent', 'viewer')", name="api_token_role_known"),
)

# Who did what through the API: the acting user (a JWT's `sub`, or `token:<id>` for an opaque token).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
    sa.Column("campaign_id", UUID(as_uuid=True)),
    sa.Column("number_id", UUID(as_uuid=True)),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("details", JSONB, nullable=False, server_default="{}"),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("ix_audit_log_campaign", "campaign_id", "id"),
)
