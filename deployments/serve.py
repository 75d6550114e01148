"""Serve every deployment from one process: `campaigns serve` (or `python -m deployments.serve`).

- send-campaign/default: run by `campaigns start`, the Prefect UI's "Run" form (campaign_id), or the
  main app through Prefect's REST API (`POST /api/deployments/{id}/create_flow_run`).
- ingest-statuses/default: every minute, each run ingesting once a second for the minute
  (a status reaches the statistics about a second after receipt; see flows/ingest_statuses.py).
- campaign-scheduler/default: every 30 seconds, starts scheduled campaigns and resumes campaigns paused
  by a number's hourly or daily cap once the window has ended.
- create-campaign/default and campaign-control/default: the operator's forms in the Prefect UI (create a
  campaign, then draft / start / schedule it; pause, resume, cancel, retry-failed, schedule, start one).
The global concurrency limit for send batches is created here if missing.
"""

from __future__ import annotations

from prefect import serve

from deployments.limits import ensure_send_limit
from flows.campaign_control import campaign_control
from flows.campaign_scheduler import campaign_scheduler
from flows.create_campaign import create_campaign
from flows.ingest_statuses import ingest_statuses
from flows.send_campaign import send_campaign

INGEST_INTERVAL = 60
OPERATOR_TAGS = ["campaigns", "operator"]
POLL_SECONDS = 2  # a started campaign's run begins within 2 s (Prefect's default poll is every 10 s)


def main(limit: int = 8) -> None:
    ensure_send_limit()
    serve(
        send_campaign.to_deployment(name="default", tags=["campaigns"]),
        ingest_statuses.to_deployment(name="default", interval=INGEST_INTERVAL, tags=["campaigns"],
                                      parameters={"run_for_seconds": INGEST_INTERVAL, "every_seconds": 1.0}),
        campaign_scheduler.to_deployment(name="default", interval=30, tags=["campaigns"]),
        create_campaign.to_deployment(name="default", tags=OPERATOR_TAGS),
        campaign_control.to_deployment(name="default", tags=OPERATOR_TAGS),
        limit=limit,
        query_seconds=POLL_SECONDS,
    )


if __name__ == "__main__":
    main()
