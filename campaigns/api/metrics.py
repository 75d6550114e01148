"""`/metrics` for Prometheus: what an on-call person watches, read when scraped.

From Redis (added by every sending process, campaigns/sending/metrics.py): messages sent, failed by error
code, the provider's rate-limit answers (130429 and its kin), send-batch durations, and each number's rate
factor now in force. From Postgres, with queries that stay cheap however large a campaign is: campaigns by
status (an aggregate over campaigns, not recipients) and the ingestion lag (the oldest webhook not yet
applied, found through the pending events' partial index).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from campaigns.sending import metrics as send_metrics
from campaigns.store.schema import CAMPAIGN_STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCollector(Collector):
    def __init__(self, db: sa.Engine, redis_url: str) -> None:
        self.db = db
        self.redis_url = redis_url
        self._redis: redis.Redis | None = None  # connected on the first scrape, not when the app is made

    def collect(self) -> Iterator[Metric]:
        yield from self._sending()
        yield from self._database()

    def _sending(self) -> Iterator[Metric]:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=2.0)
        read = send_metrics.read(self._redis)
        c = read["counters"]
        yield CounterMetricFamily("campaigns_messages_sent", "Messages the provider accepted", value=c.get("sent", 0))
        failed = CounterMetricFamily(
            "campaigns_messages_failed", "Messages failed for good, by error code", labels=["code"]
        )
        for name, n in sorted(c.items()):
            if name.startswith("failed:"):
                failed.add_metric([name.removeprefix("failed:")], n)
        yield failed
        yield CounterMetricFamily(
            "campaigns_rate_limit_answers",
            "Sends the provider refused for throughput (130429, 80007, 4): each slows its number down",
            value=c.get("throttled", 0),
        )
        slow = GaugeMetricFamily(
            "campaigns_number_rate_factor",
            "Share of its rate a number sends at now (1: full; below 1 after 130429)",
            labels=["number"],
        )
        for number, factor in sorted(read["slowdown"].items()):
            slow.add_metric([number], factor)
        yield slow
        buckets = [(_le(le), c.get(f"batch_le:{le}", 0)) for le in send_metrics.BUCKETS]
        yield HistogramMetricFamily(
            "campaigns_send_batch_seconds",
            "A send batch from claim to record",
            buckets=buckets,
            sum_value=c.get("batch_sum", 0),
        )

    def _database(self) -> Iterator[Metric]:
        with self.db.connect() as conn:
            by_status: dict[str, int] = dict(
                conn.execute(sa.text("select status, count(*) from campaigns group by status")).all()
            )
            lag = conn.execute(
                sa.text("""
                select coalesce(extract(epoch from now() - (
                    select received_at from webhook_events where state = 'pending' order by id limit 1)), 0)
            """)
            ).scalar_one()
        campaigns = GaugeMetricFamily("campaigns_by_status", "Campaigns in each status", labels=["status"])
        for status in CAMPAIGN_STATUSES:
            campaigns.add_metric([status], by_status.get(status, 0))
        yield campaigns
        yield GaugeMetricFamily(
            "campaigns_ingestion_lag_seconds",
            "Age of the oldest webhook event not yet applied (0: none waits)",
            value=float(lag),
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)


def registry(db: sa.Engine, redis_url: str) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(db, redis_url))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
