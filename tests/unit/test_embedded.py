"""The embedded Prefect server belongs to its checkout: another checkout's server on the port is refused."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from campaigns.infra.embedded import ensure_prefect
from campaigns.settings import Settings


class _Healthy(http.server.BaseHTTPRequestHandler):
    """Answers like a Prefect server's API (`/api/health` 200), as another checkout's would."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


def test_a_prefect_server_another_home_started_on_the_port_is_refused_naming_the_port(tmp_path, monkeypatch):
    """Reusing it mixed two installations without a word (their code, their data, the UI of one showing the
    other's runs), and its owner could stop it under the tests: session 6's CI runs and a `make faults`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CAMPAIGNS_PREFECT_PORT", str(port))
    try:
        with pytest.raises(RuntimeError, match=rf"^port {port} is taken by a Prefect server that .* did not start"):
            ensure_prefect(Settings(campaigns_home=tmp_path, prefect_api_url=None))
    finally:
        server.shutdown()
