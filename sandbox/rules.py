"""The rules a send meets before it is accepted: who may send, how fast, and which sends are made to fail.

Semantics the tests rely on:

* Meta's token (``Authorization: Bearer``) and Evolution's ``apikey`` are checked against the configured
  ones; a number or instance not configured accepts any. A refusal is code 190 (401).
* The throughput window counts accepted messages per ``phone_number_id`` (or instance) over the last 1.0 s
  of decision times; ``max_window_per_second`` is therefore exact and can never exceed ``mps_cap``. One
  more would be refused with 130429.
* Failure-rule attempts are counted per ``(rule, phone_number_id, wa_id, biz_opaque_callback_data)``: a
  ``times: 2`` rule fails the first two sends of *that message* and lets the third through; an exhausted
  rule, or one whose probability roll misses, is skipped and the next rule is tried.
"""

from __future__ import annotations

import hmac
import random
from collections import deque

from sandbox.config import FailureRule, SandboxConfig
from sandbox.errors import GraphError
from sandbox.wire import Outgoing


def check_token(cfg: SandboxConfig, phone_number_id: str, header: str | None) -> None:
    """Meta's guard: a Bearer token is always required, and must be the number's when one is set."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise GraphError(
            190,
            "Invalid OAuth access token - Cannot parse access token",
            details="Missing or malformed Authorization header.",
        )
    if phone_number_id in cfg.tokens:
        expected = cfg.tokens[phone_number_id]
        if expected is None or not hmac.compare_digest(expected.encode(), token.encode()):
            raise GraphError(
                190,
                "Error validating access token: Session has expired",
                details="The access token is invalid or has expired.",
                subcode=463,
            )


def check_apikey(cfg: SandboxConfig, instance: str, key: str | None) -> None:
    """Evolution's guard: an ``apikey`` is always required, and must be the instance's when one is set."""
    expected = cfg.evolution_keys.get(instance)
    if not key or (expected is not None and not hmac.compare_digest(expected.encode(), key.encode())):
        raise GraphError(190, "Unauthorized", details="Missing or wrong apikey.")


class Throughput:
    """Accepted messages per sender in the last second, and the most ever seen in one second."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._overall: deque[float] = deque()
        self.max_window = 0
        self.max_window_by_phone: dict[str, int] = {}

    def check(self, cfg: SandboxConfig, phone_number_id: str, now: float) -> None:
        """Prune this number's 1-s window and answer 130429 if one more message would exceed ``mps_cap``."""
        window = self._windows.get(phone_number_id)
        if window is None:
            window = self._windows[phone_number_id] = deque()
        cutoff = now - 1.0
        while window and window[0] <= cutoff:
            window.popleft()
        if cfg.mps_cap is not None and len(window) >= cfg.mps_cap:
            raise GraphError(130429, details=f"Cloud API message throughput ({cfg.mps_cap}/s) has been reached.")

    def count(self, phone_number_id: str, now: float) -> None:
        """Count an accepted message (after :meth:`check` at the same ``now``) in its number's window and overall."""
        window = self._windows[phone_number_id]
        window.append(now)
        if len(window) > self.max_window_by_phone.get(phone_number_id, 0):
            self.max_window_by_phone[phone_number_id] = len(window)
        overall = self._overall
        cutoff = now - 1.0
        while overall and overall[0] <= cutoff:
            overall.popleft()
        overall.append(now)
        self.max_window = max(self.max_window, len(overall))


class RuleAttempts:
    """Which failure rule a send meets, counting each rule's attempts per message (``times``)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng  # the sandbox's outcome RNG: probabilities roll in the order sends are decided
        self._hits: dict[tuple[int, str, str, str | None], int] = {}

    def clear(self) -> None:
        """Forget the attempts (the rules changed, or the sandbox was reset)."""
        self._hits.clear()

    def match(self, cfg: SandboxConfig, phone_number_id: str, msg: Outgoing) -> FailureRule | None:
        """The first rule that matches, is not exhausted and wins its probability roll; its attempt is counted."""
        for index, rule in enumerate(cfg.rules):
            if not rule.matches(phone_number_id, msg.wa_id):
                continue
            key = (index, phone_number_id, msg.wa_id, msg.biz)
            hits = self._hits.get(key, 0)
            if rule.times is not None and hits >= rule.times:
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            self._hits[key] = hits + 1
            return rule
        return None
