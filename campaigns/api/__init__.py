"""The HTTP API the main app (PyTake) uses: the seed's /api/v1/campaigns, typed and documented
(/api/v1/openapi.json, /api/v1/docs), over campaigns.control."""

from campaigns.api.app import create_app
from campaigns.api.errors import Unavailable
from campaigns.api.launcher import PrefectLauncher

__all__ = ["PrefectLauncher", "Unavailable", "create_app"]
