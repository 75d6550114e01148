"""prefect.yaml is tested like code: every entrypoint imports and is a Prefect flow."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_entrypoint_is_a_flow():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert isinstance(flow, Flow)
        names.add(flow.name)
    assert names == {"send-campaign", "ingest-statuses", "campaign-scheduler", "create-campaign", "campaign-control"}
