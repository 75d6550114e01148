"""The sandbox: a real local HTTP server that answers like Meta's WhatsApp Cloud API and Evolution API.

The campaign engine is only trustworthy if it is exercised against something that answers like Meta does:
real sockets, real latency, real throughput limits, Meta's error envelope and codes, and signed status
webhooks that arrive late, twice or out of order. The sandbox provides exactly that, so that the tests, the
benchmarks and ``make demo`` talk HTTP to a peer instead of to mocks. It is not part of the product: it
imports nothing from ``campaigns``, and ``campaigns`` imports it only where ``campaigns sandbox serve`` and
``campaigns demo`` start it.

Modules:

* ``errors``: Meta's Graph error codes (:data:`ERROR_CATALOG`) and the error envelope a refusal is written as.
* ``config``: every knob, :class:`SandboxConfig` and its :class:`FailureRule` s, changeable at runtime.
* ``wire``: the send requests understood and the answers given, in Meta's wire and in Evolution's.
* ``rules``: what a send meets before it is accepted: token/apikey checks, the 1-s window (130429), failure rules.
* ``events``: the webhook bodies, Meta's batched envelope and Evolution's one event per POST.
* ``webhooks``: their delivery: signing, scheduling with duplicates and shuffling, batching, retries.
* ``state``: :class:`Sandbox`, one fake API's records and counters and the decision on every send.
* ``server``: the aiohttp app and admin API (:func:`create_app`), :class:`SandboxServer` (a background
  thread) and :func:`serve` (the foreground, ``campaigns sandbox serve``).
* ``process``: :class:`SandboxProcess`, the sandbox in a process of its own (demo, benchmarks, rate tests).
"""

from sandbox.config import FailureRule, SandboxConfig
from sandbox.errors import ERROR_CATALOG, default_http_status
from sandbox.process import SandboxProcess
from sandbox.server import SandboxServer, create_app, serve
from sandbox.state import Sandbox
from sandbox.webhooks import sign_body, verify_signature

__all__ = [
    "ERROR_CATALOG",
    "FailureRule",
    "Sandbox",
    "SandboxConfig",
    "SandboxProcess",
    "SandboxServer",
    "create_app",
    "default_http_status",
    "serve",
    "sign_body",
    "verify_signature",
]
