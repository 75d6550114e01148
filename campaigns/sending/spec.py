"""The campaign as the send path needs it: plain data read once per batch (picklable, loggable, passed to the
send engine's process), with the limits its number and its own pace put on sending.

Why a module of its own: every step of a batch (claim size, rendering, pacing, retry delays) reads it, and
the runner builds it; none of them should have to import the others to get it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from campaigns.sending.ratelimit import (
    Cap,
    Limit,
    PortfolioLimit,
    campaign_limit,
    number_caps,
    number_key,
    number_limit,
    portfolio_limit,
)


@dataclass(frozen=True)
class CampaignSpec:
    """The parts of a campaign row the send path needs (plain data: picklable, loggable)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    number_id: uuid.UUID
    message_type: str
    message_content: dict[str, Any]
    template_variables: dict[str, Any]
    respect_opt_out: bool
    messages_per_hour: int | None
    delay_seconds: float
    retry_max_attempts: int
    retry_base_delay: int
    retry_max_delay: int
    mps: int
    provider: str = "meta_cloud"
    phone_number_id: str = ""
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None
    portfolio_id: uuid.UUID | None = None
    portfolio_limit: int | None = None

    @classmethod
    def from_rows(cls, campaign: dict[str, Any], number: dict[str, Any]) -> CampaignSpec:
        return cls(
            id=campaign["id"],
            organization_id=campaign["organization_id"],
            number_id=number["id"],
            message_type=campaign["message_type"],
            message_content=campaign["message_content"],
            template_variables=campaign["template_variables"] or {},
            respect_opt_out=campaign["respect_opt_out"],
            messages_per_hour=campaign["messages_per_hour"],
            delay_seconds=campaign["delay_between_messages_seconds"],
            retry_max_attempts=campaign["retry_max_attempts"],
            retry_base_delay=campaign["retry_base_delay"],
            retry_max_delay=campaign["retry_max_delay"],
            mps=number["mps"],
            provider=number["provider"],
            phone_number_id=number["phone_number_id"],
            per_minute=number.get("per_minute"),
            per_hour=number.get("per_hour"),
            per_day=number.get("per_day"),
            portfolio_id=number.get("portfolio_id"),
            portfolio_limit=number.get("portfolio_limit"),
        )

    def portfolio(self) -> PortfolioLimit | None:
        return portfolio_limit(self.portfolio_id, self.portfolio_limit)

    def caps(self) -> list[Cap]:
        return number_caps(
            number_key(self.provider, self.phone_number_id), self.provider, self.per_minute, self.per_hour, self.per_day
        )

    def limits(self, headroom: float) -> list[Limit]:
        limits = [number_limit(number_key(self.provider, self.phone_number_id), self.mps, headroom, self.provider)]
        own = campaign_limit(str(self.id), self.messages_per_hour, self.delay_seconds)
        return [*limits, own] if own else limits

    def claim_size(self, batch_size: int, headroom: float) -> int:
        """At most ~30 s of sending at this campaign's pace, so claimed rows never wait long."""
        step = max(limit.interval_us for limit in self.limits(headroom)) / 1_000_000
        return max(1, min(batch_size, math.ceil(30 / step)))
