"""The sandbox in a process of its own, as Meta is on machines of its own.

Why: the sandbox decides a send's 130429 on a 1-s window of its decision times. In the sender's process, a
stall of that process (the GIL, a garbage collection, a Prefect server starting beside it on two cores)
holds requests sent on time and then decides them together: the window counts a burst the sender never
sent and answers 130429. Its own process answers as the real API would. Used by `make demo`, the benchmarks
and the rate tests; `python -m sandbox PORT CONFIG_JSON` is what it runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any, Self

import httpx

from sandbox.config import SandboxConfig


class SandboxProcess:
    """A `SandboxConfig` served by `python -m sandbox` on a free port; the admin API as methods."""

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1") -> None:
        self.config = config or SandboxConfig()
        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Self:
        command = [sys.executable, "-m", "sandbox", str(self.port), self.config.model_dump_json()]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/_sandbox/stats", timeout=0.5)
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the sandbox did not start on {self.url}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def messages(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "/_sandbox/messages", timeout=60).json()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_sandbox/stats", timeout=60).json()

    def configure(self, **fields: Any) -> None:
        httpx.post(self.url + "/_sandbox/config", json=fields, timeout=10).raise_for_status()

    def set_token(self, phone_number_id: str, token: str | None) -> None:
        body = {"phone_number_id": phone_number_id, "token": token}
        httpx.post(self.url + "/_sandbox/tokens", json=body, timeout=10).raise_for_status()

    def drain_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until every scheduled webhook was posted (True) or `timeout` passed (False)."""
        answer = httpx.post(self.url + "/_sandbox/webhooks/drain", params={"timeout": timeout}, timeout=timeout + 10)
        return answer.raise_for_status().json()["pending"] == 0


def main() -> None:
    from sandbox.server import serve

    port, config = sys.argv[1], SandboxConfig.model_validate(json.loads(sys.argv[2]))
    serve(config, "127.0.0.1", int(port))
