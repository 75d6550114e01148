"""The sandbox: a real local HTTP server that answers like Meta's WhatsApp Cloud API and Evolution API."""

from sandbox.state import (
    ERROR_CATALOG,
    FailureRule,
    Sandbox,
    SandboxConfig,
    SandboxServer,
    create_app,
    default_http_status,
    serve,
    sign_body,
    verify_signature,
)

__all__ = [
    "ERROR_CATALOG",
    "FailureRule",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "create_app",
    "default_http_status",
    "serve",
    "sign_body",
    "verify_signature",
]
