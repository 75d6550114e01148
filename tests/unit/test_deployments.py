"""prefect.yaml (the work-pool path) and `campaigns serve` (deployments/serve.py SERVED) describe the same
deployments: a change to one that is not made to the other fails here. And a worker machine without what it
must share is refused before it takes a run (tests/test_work_pool.py runs the pool itself, `make scale`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.serve import SERVED, Served

ROOT = Path(__file__).resolve().parents[2]


def _pool_deployments() -> dict[str, dict]:
    """prefect.yaml's deployments by the name of the flow their entrypoint names."""
    import importlib

    out = {}
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        module, attr = deployment["entrypoint"].rsplit(".", 1)  # a module path: no file path pinned
        out[getattr(importlib.import_module(module), attr).name] = deployment
    return out


def test_prefect_yaml_deploys_exactly_what_serve_serves():
    assert sorted(_pool_deployments()) == sorted(served.flow.name for served in SERVED)


def test_no_deployment_pins_the_deployers_folder():
    """A pull step with a path (or `{{ $PWD }}`, resolved by `prefect deploy`) would send every worker to
    the deploying machine's folder: the runs import the flows from the installed project instead."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert config["pull"] == []
    assert all("/" not in d["entrypoint"] and ":" not in d["entrypoint"] for d in config["deployments"])


@pytest.mark.parametrize("served", SERVED, ids=lambda served: served.flow.name)
def test_each_deployment_has_the_same_tags_queue_parameters_schedule_and_limit(served: Served):
    pool = _pool_deployments()[served.flow.name]
    assert set(pool.get("tags", [])) == set(served.tags)
    assert pool["work_pool"] == {"name": "campaigns", "work_queue_name": served.queue}
    assert pool.get("parameters", {}) == served.parameters
    assert [s["interval"] for s in pool.get("schedules", [])] == (
        [served.every_seconds] if served.every_seconds else []
    )
    expected_limit = {"limit": 1, "collision_strategy": "CANCEL_NEW"} if served.one_at_a_time else None
    assert pool.get("concurrency_limit") == expected_limit
    assert pool.get("description"), "the UI shows it on the deployment's page"


def test_a_machine_without_the_shared_urls_is_refused_naming_each(tmp_path):
    """Run from a folder that is not the code's, as on another machine: without REDIS_URL and PREFECT_API_URL
    a worker would start its own embedded Redis and Prefect and take runs no one else sees."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PREFECT_API_URL")}
    env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:5432/anything"
    done = subprocess.run(
        [sys.executable, "-m", "campaigns.cli", "worker"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "REDIS_URL is not set" in done.stderr and "PREFECT_API_URL is not set" in done.stderr
    assert "DATABASE_URL" not in done.stderr  # the one given is not blamed


def test_a_run_takes_send_slots_by_its_rate_so_slow_numbers_do_not_hold_the_platforms_sending():
    """32 slots: with twelve a run whatever its rate, two 80 msg/s campaigns held 24 and the platform's other
    numbers waited for them; by rate, 32 slots hold ten 80 msg/s numbers and two at 1,000 at once."""
    from deployments.limits import slots_for_run

    assert slots_for_run(76.8) == 1  # 80 msg/s less the headroom
    assert slots_for_run(480) == 6
    assert slots_for_run(960) == 12  # the rate twelve parallel batches were tuned for
    assert slots_for_run(5_000) == 12  # never more than a run's parallel batches
    assert slots_for_run(100 / 3600) == 1  # at least one
