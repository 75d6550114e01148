"""Every knob of the sandbox: :class:`SandboxConfig` and the :class:`FailureRule` s it injects errors with.

All of it can be changed at runtime (:meth:`sandbox.state.Sandbox.configure`, ``POST /_sandbox/config``):
latency, the throughput cap, failure rules, tokens and API keys, templates, and how status webhooks behave
(delays, rates, duplicates, shuffling, batching, retries).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from sandbox.errors import GraphError


class FailureRule(BaseModel):
    """Make sends to matching recipients fail, synchronously or through a ``failed`` status webhook.

    ``match`` is a regex searched in the recipient's wa_id (the ``to`` number without ``+``/spaces), so
    ``"3$"`` hits every number ending in 3 and ``".*"`` hits everyone. Rules apply to Evolution sends too
    (``phone_number_id`` then names the instance); see :func:`sandbox.wire.evolution_refusal` for their answers.
    """

    model_config = ConfigDict(extra="forbid")

    match: str = ".*"
    code: int
    http_status: int | None = None
    times: int | None = Field(default=None, ge=0, description="fail the first N attempts, then succeed")
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    where: Literal["sync", "webhook"] = "sync"
    phone_number_id: str | None = Field(default=None, description="only for this sender number")
    message: str | None = Field(default=None, description="override of the error message")
    details: str | None = Field(default=None, description="override of error_data.details")
    retry_after: str | None = Field(default=None, description="Retry-After header of a sync refusal (any text)")

    _pattern: re.Pattern[str] = PrivateAttr()

    @field_validator("match")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    def model_post_init(self, __context: Any) -> None:
        """Compile the regex once; rules are evaluated on every request."""
        self._pattern = re.compile(self.match)

    def matches(self, phone_number_id: str, wa_id: str) -> bool:
        if self.phone_number_id is not None and self.phone_number_id != phone_number_id:
            return False
        return self._pattern.search(wa_id) is not None

    def error(self) -> GraphError:
        return GraphError(self.code, self.message, details=self.details, http_status=self.http_status)


class SandboxConfig(BaseModel):
    """All sandbox settings. Every field can be changed at runtime (``configure`` / ``POST /_sandbox/config``)."""

    model_config = ConfigDict(extra="forbid")

    # --- send endpoint
    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0, description="uniform +/- around latency_ms")
    mps_cap: int | None = Field(default=None, ge=0, description="accepted messages/s per phone number")
    rules: list[FailureRule] = Field(default_factory=list)
    tokens: dict[str, str | None] = Field(
        default_factory=dict,
        description="phone_number_id -> valid token (None = revoked). Numbers not listed accept any token.",
    )
    quality_ratings: dict[str, str] = Field(
        default_factory=dict, description="phone_number_id -> quality rating Graph reports (default GREEN)"
    )
    evolution_states: dict[str, str] = Field(
        default_factory=dict, description="instance -> connection state Evolution reports (default open)"
    )
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="template name -> body text with {{1}}/{{name}} placeholders; when non-empty, unknown "
        "names fail with 132001 and wrong parameter counts with 132000",
    )
    answer_ids: dict[str, Any] = Field(
        default_factory=dict,
        description="wa_id -> the message id its accepted sends are answered with instead of their own (any "
        "JSON: a broken or hostile peer's duplicate or non-string id); records and webhooks keep the real id",
    )
    seed: int | None = Field(default=0, description="seed of the RNG behind rule probabilities and rates")
    record_path: str | None = Field(default=None, description="append every accepted message as JSONL")

    # --- identity used in webhooks
    waba_id: str = "100000000000001"
    waba_ids: dict[str, str] = Field(default_factory=dict, description="phone_number_id -> WABA id")
    display_phone_numbers: dict[str, str] = Field(default_factory=dict)

    # --- status webhooks
    webhook_url: str | None = None
    app_secret: str = "sandbox-app-secret"
    sent_delay_ms: float = Field(default=50.0, ge=0)
    delivered_delay_ms: float = Field(default=50.0, ge=0, description="after sent")
    read_delay_ms: float = Field(default=100.0, ge=0, description="after delivered")
    reply_delay_ms: float = Field(default=150.0, ge=0, description="after delivered")
    delivered_rate: float = Field(default=1.0, ge=0, le=1)
    read_rate: float = Field(default=0.5, ge=0, le=1, description="fraction of delivered")
    reply_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of delivered")
    reply_text: str = "Obrigado!"
    reply_profile_name: str = "Sandbox User"
    duplicate_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of events posted twice")
    duplicate_delay_ms: float = Field(default=200.0, ge=0, description="max delay of the second copy")
    duplicate_copies: int = Field(default=1, ge=1, le=10, description="extra copies of a duplicated event")
    shuffle: bool = False
    shuffle_window_ms: float = Field(default=300.0, ge=0, description="random extra delay when shuffling")
    webhook_batch_size: int = Field(default=50, ge=1, description="events per POST")
    webhook_statuses_per_change: int = Field(default=10, ge=1)
    webhook_changes_per_entry: int = Field(default=3, ge=1)
    webhook_concurrency: int = Field(default=8, ge=1, description="POSTs in flight")
    webhook_max_retries: int = Field(default=4, ge=0)
    webhook_retry_backoff_ms: float = Field(default=100.0, ge=0, description="doubles on every retry")
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    # --- Evolution API (POST /message/sendText/{instance}); the knobs above apply to it as well
    evolution_keys: dict[str, str] = Field(
        default_factory=dict, description="instance -> valid apikey. Instances not listed accept any key."
    )
    evolution_webhook_url: str | None = Field(
        default=None, description="receiver base: each event is POSTed to {evolution_webhook_url}/{instance}"
    )

    def updated(self, fields: dict[str, Any]) -> SandboxConfig:
        """A validated copy with ``fields`` replaced (rules given as dicts are parsed)."""
        return SandboxConfig.model_validate({**self.model_dump(), **fields})
