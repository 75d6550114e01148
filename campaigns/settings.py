"""Process-wide settings, read from the environment once.

Per-number credentials are not here: they live in Prefect blocks named on the number's row.
Unset URLs mean "use the embedded defaults" (see `campaigns.infra.embedded`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    database_url: str | None = Field(None, description="postgresql:// URL; unset = embedded pgserver")
    redis_url: str | None = Field(None, description="redis:// URL; unset = embedded redis-server")
    prefect_api_url: str | None = Field(None, description="Prefect API; unset = local background server")
    campaigns_home: Path = Field(Path(".campaigns"), description="where embedded servers keep their data")
    campaigns_prefect_on_postgres: bool = Field(
        False,
        description="the embedded Prefect server keeps its data on the campaigns' Postgres (needs pg_trgm), not "
        "SQLite: for hundreds of campaigns at once (SQLite answered 503 past ~90); opt-in while the tests run on "
        "SQLite",
    )

    # Send path tuning.
    batch_size: int = Field(100, ge=1, le=5000)
    parallel_batches: int = Field(12, ge=1, le=64, description="send_batch tasks running at once per flow run")
    http_max_connections: int = Field(1000, ge=1)
    http_timeout_seconds: float = Field(30.0, gt=0)
    rate_headroom: float = Field(0.04, ge=0, lt=1, description="share of a number's mps left for replies")
    late_tolerance_seconds: float = Field(
        0.01, ge=0, description="a send woken later than this after its rate-limit slot waits for the next slot"
    )
    control_poll_seconds: float = Field(0.5, gt=0, description="how often in-flight sends re-read the status")
    reconcile_grace_seconds: float = Field(
        120.0, ge=0, description="how long a send of unknown outcome waits for its status webhook"
    )
    serve_poll_stale_seconds: float = Field(
        15.0, gt=0, description="start/resume answer 503 when nothing polled the send deployment for this long"
    )
    pending_lost_seconds: float = Field(
        120.0,
        gt=0,
        description="a send run a worker took (Pending) that has not started for this long lost its worker",
    )
    webhook_retention_days: float = Field(
        7.0, ge=0, description="applied webhook events older than this are deleted (0: kept forever)"
    )
    circuit_breaker_failures: int = Field(
        50, ge=0, description="pause a campaign after this many failed sends in a row (0: never)"
    )
    provider_outage_failures: int = Field(
        10, ge=1, description="a campaign's sends in a row the provider could not take that mean it is down"
    )
    provider_probe_max_seconds: float = Field(
        60.0, gt=0, description="the longest wait between two tries of a provider that is down"
    )
    default_country_code: str = Field("55", description="prepended to imported phones without one")

    # Webhooks.
    meta_app_secret: SecretStr | None = Field(None, description="the Meta app's secret for X-Hub-Signature-256")
    webhook_max_body_bytes: int = Field(3 * 1024 * 1024)
    opt_out_keywords: str = Field("PARAR,SAIR,CANCELAR,STOP", description="a reply that is exactly one opts out")
    opt_in_keywords: str = Field("VOLTAR,START", description="a reply that is exactly one opts back in")

    # HTTP API.
    api_max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest request body (a contacts audience lists its ids)"
    )
    log_format: Literal["text", "json"] = Field("text", description="the HTTP servers' log lines: text or JSON")
    access_log: bool = Field(True, description="an access line per request on the HTTP servers")
    api_jwt_secret: SecretStr | None = Field(None, description="HS256 secret shared with the main app for its JWTs")
    api_jwt_jwks_url: str | None = Field(None, description="the main app's JWKS, for RS256/ES256/EdDSA JWTs")
    api_jwt_audience: str | None = Field(None, description="the JWTs' required aud")
    api_jwt_issuer: str | None = Field(None, description="the JWTs' required iss")
    api_jwt_leeway_seconds: float = Field(30, ge=0, le=600, description="clock skew allowed on exp, nbf and iat")
    api_max_csv_exports: int = Field(
        4, ge=1, description="CSV exports streaming at once; each holds a database connection while its client reads"
    )

    # Prefect.
    send_concurrency_name: str = Field("whatsapp-send-batches", description="Prefect global concurrency limit")
    send_concurrency_limit: int = Field(
        32,
        ge=1,
        description="the platform's sending shares (created if missing): a run takes parallel_batches of them at "
        "1,000 msg/s, fewer at slower rates (at least one), so 32 are about 2,700 msg/s sending at once",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
