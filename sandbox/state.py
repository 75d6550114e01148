"""The :class:`Sandbox`: one fake API's records and counters, and the decision on every send.

Semantics the tests rely on:

* A message is *accepted* the moment the request is decided (before the configured latency sleep). It is
  recorded then, like Meta: if the client gives up while waiting, the message was still sent.
* Evolution (``POST /message/sendText/{instance}``, header ``apikey``) goes through the same decision,
  record and webhook schedule, with the instance in the place of the phone_number_id. Only the wire
  differs (:mod:`sandbox.wire`, :mod:`sandbox.events`).
* Each accepted message's record carries the truth the engine's statistics must match: its last status
  (``final_status``) and whether it was replied, fixed when its webhooks are planned.
* Outcomes (rule probabilities, delivered/read/reply rates, duplicates) come from one RNG seeded by
  ``seed``, so a run is reproducible; latency jitter and shuffling come from another, unseeded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from sandbox.config import FailureRule, SandboxConfig
from sandbox.errors import GraphError
from sandbox.events import evolution_event, meta_event
from sandbox.rules import RuleAttempts, Throughput, check_apikey, check_token
from sandbox.webhooks import WebhookSender
from sandbox.wire import EVOLUTION, GRAPH, MessageIds, Outgoing, Wire, parse_evolution, parse_message

logger = logging.getLogger(__name__)

#: An answer to give: HTTP status, JSON body and extra headers (or None).
Answer = tuple[int, dict[str, Any], dict[str, str] | None]


class Sandbox:
    """State of one fake Cloud API (and Evolution). All methods must run on the event loop serving the app."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self._cfg = config or SandboxConfig()
        self._rng = random.Random(self._cfg.seed)  # outcomes: rules, rates, duplicates (reproducible)
        self._timing_rng = random.Random()  # latency jitter and shuffle delays (timing only)
        self._ids = MessageIds()
        self._rules = RuleAttempts(self._rng)
        self.webhooks = WebhookSender(lambda: self._cfg, self._rng, self._timing_rng)
        self._record_file: IO[str] | None = None
        self._open_record_file()
        self._reset_state()

    # ---- configuration -------------------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        return self._cfg

    def configure(self, **fields: Any) -> SandboxConfig:
        """Validate and apply new settings; raises ``pydantic.ValidationError`` on bad values."""
        old = self._cfg
        new = old.updated(fields)
        self._cfg = new
        if new.rules != old.rules:
            self._rules.clear()
        if new.seed != old.seed:
            self._rng.seed(new.seed)
        if new.record_path != old.record_path:
            self._close_record_file()
            self._open_record_file()
        logger.debug("sandbox configured: %s", sorted(fields))
        return new

    def set_token(self, phone_number_id: str, token: str | None) -> None:
        """Set the only valid token for a number; ``None`` revokes it (every token then gets 401/190)."""
        tokens = dict(self._cfg.tokens)
        tokens[phone_number_id] = token
        self.configure(tokens=tokens)

    def reset(self) -> None:
        """Forget records and counters, drop scheduled (not yet posted) webhooks, truncate ``record_path``."""
        self.webhooks.drop_scheduled()
        self._rng.seed(self._cfg.seed)
        if self._record_file is not None:
            self._record_file.seek(0)
            self._record_file.truncate()
        self._reset_state()

    def _reset_state(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._requests = 0
        self._accepted = 0
        self._throttled = 0
        self._errors_by_code: Counter[int] = Counter()
        self._webhook_failures_by_code: Counter[int] = Counter()
        self._accepted_by_phone: Counter[str] = Counter()
        self._throughput = Throughput()
        self._rules.clear()
        self.webhooks.reset_counters()

    def _open_record_file(self) -> None:
        if self._cfg.record_path:
            self._record_file = open(self._cfg.record_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def _close_record_file(self) -> None:
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    # ---- read-only views ----------------------------------------------------------------------------

    def messages(
        self, biz: str | None = None, to: str | None = None, phone_number_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the accepted-message records, optionally filtered."""
        return [
            dict(r)
            for r in self._records
            if (biz is None or r["biz_opaque_callback_data"] == biz)
            and (to is None or r["to"] == to or r["wa_id"] == to)
            and (phone_number_id is None or r["phone_number_id"] == phone_number_id)
        ]

    def stats(self) -> dict[str, Any]:
        """Counters; ``max_window_per_second`` is the most accepted messages seen in any 1-s window."""
        return {
            "requests": self._requests,
            "accepted": self._accepted,
            "accepted_by_phone": dict(self._accepted_by_phone),
            "throttled_130429": self._throttled,
            "errors_by_code": dict(self._errors_by_code),
            "max_window_per_second": self._throughput.max_window,
            "max_window_per_second_by_phone": dict(self._throughput.max_window_by_phone),
            "webhook_failures_by_code": dict(self._webhook_failures_by_code),
            **self.webhooks.stats(),
        }

    def phone_number(self, phone_number_id: str, authorization: str | None) -> Answer:
        """``GET /{version}/{phone_number_id}``: the number as Graph shows it, token checked (the preflight)."""
        cfg = self._cfg
        return _guarded(
            GRAPH,
            lambda: check_token(cfg, phone_number_id, authorization),
            {
                "id": phone_number_id,
                "verified_name": "PyTake Sandbox",
                "display_phone_number": f"+1 555 {phone_number_id[-7:]}",
                "quality_rating": cfg.quality_ratings.get(phone_number_id, "GREEN"),
            },
        )

    def evolution_state(self, instance: str, apikey: str | None) -> Answer:
        """``GET /instance/connectionState/{instance}``: whether the instance is connected, apikey checked."""
        cfg = self._cfg
        state = cfg.evolution_states.get(instance, "open")
        return _guarded(
            EVOLUTION,
            lambda: check_apikey(cfg, instance, apikey),
            {"instance": {"instanceName": instance, "state": state}},
        )

    # ---- sends --------------------------------------------------------------------------------------

    async def send_graph(self, phone_number_id: str, raw: bytes, authorization: str | None) -> Answer:
        """``POST /{version}/{phone_number_id}/messages``: decide at once, sleep the latency, answer."""
        cfg = self._cfg

        def admit() -> Outgoing:
            check_token(cfg, phone_number_id, authorization)
            return parse_message(raw, cfg.templates)

        return await self._send(cfg, GRAPH, phone_number_id, admit)

    async def send_evolution(self, instance: str, raw: bytes, apikey: str | None, server_url: str) -> Answer:
        """``POST /message/sendText/{instance}`` (header ``apikey``): Evolution's wire, the same decision."""
        cfg = self._cfg
        self.webhooks.server_url = server_url

        def admit() -> Outgoing:
            check_apikey(cfg, instance, apikey)
            return parse_evolution(raw)

        return await self._send(cfg, EVOLUTION, instance, admit)

    async def _send(self, cfg: SandboxConfig, wire: Wire, sender: str, admit: Callable[[], Outgoing]) -> Answer:
        """Decide at once (auth + body, throughput, rules, record), sleep the latency, answer in ``wire``."""
        # From here to the sleep there is no await: the decision is atomic with respect to other requests.
        self._requests += 1
        rule: FailureRule | None = None
        record: dict[str, Any] | None = None
        msg: Outgoing | None = None
        try:
            msg = admit()
            now = time.monotonic()
            self._throughput.check(cfg, sender, now)
            rule = self._rules.match(cfg, sender, msg)
            if rule is not None and rule.where == "sync":
                raise rule.error()
            record = self._accept(wire.provider, sender, msg, now, rule)
            status, body = wire.accepted({**record, "wamid": cfg.answer_ids.get(msg.wa_id, record["wamid"])})
        except GraphError as err:
            self._errors_by_code[err.code] += 1
            if err.code == 130429:
                self._throttled += 1
            status, body = wire.refused(err, msg)
        delay = cfg.latency_ms
        if cfg.latency_jitter_ms:
            delay += self._timing_rng.uniform(-cfg.latency_jitter_ms, cfg.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if record is not None:
            self._schedule_webhooks(self._cfg, record, rule)
        retry_after = rule.retry_after if record is None and rule is not None else None
        return status, body, {"Retry-After": retry_after} if retry_after else None

    def _accept(
        self, provider: str, phone_number_id: str, msg: Outgoing, now: float, rule: FailureRule | None
    ) -> dict[str, Any]:
        self._throughput.count(phone_number_id, now)
        self._accepted += 1
        self._accepted_by_phone[phone_number_id] += 1
        record: dict[str, Any] = {
            "wamid": self._ids.new(provider),
            "provider": provider,  # the API spoken: "meta_cloud" (Graph) or "evolution"
            "phone_number_id": phone_number_id,
            "to": msg.to,
            "wa_id": msg.wa_id,
            "type": msg.type,
            "body": msg.body,
            "template": msg.template,
            "rendered": msg.rendered,
            "biz_opaque_callback_data": msg.biz,
            "accepted_at": time.time(),
            "webhook_error_code": rule.code if rule is not None else None,
        }
        if provider == "evolution":
            record["instance"] = phone_number_id
        self._records.append(record)
        if self._record_file is not None:
            self._record_file.write(json.dumps(record, default=str) + "\n")
        return record

    # ---- webhooks -----------------------------------------------------------------------------------

    def _schedule_webhooks(self, cfg: SandboxConfig, record: dict[str, Any], rule: FailureRule | None) -> None:
        """Plan sent/delivered/read (or failed) and maybe a reply. Only heap pushes: never slows the send."""
        evolution = record["provider"] == "evolution"
        if not (cfg.evolution_webhook_url if evolution else cfg.webhook_url):
            return
        now, wall = time.monotonic(), time.time()
        build = evolution_event if evolution else meta_event

        def push(kind: str, at: float) -> None:
            # The timestamp is the event time; shuffling only changes when it is posted.
            item = build(cfg, record, kind, wall + at, rule, self._ids)
            self.webhooks.push(cfg, now + at, record["provider"], record["phone_number_id"], kind, item)

        t_sent = cfg.sent_delay_ms / 1000.0
        # The truth the engine's statistics must match: each message's last status and whether it was replied.
        record["final_status"], record["replied"] = "sent", False
        if rule is not None:  # where == "webhook": the API accepted it, then reports the failure
            record["final_status"] = "failed"
            self._webhook_failures_by_code[rule.code] += 1
            push("failed", t_sent)
            return
        push("sent", t_sent)
        if self._rng.random() >= cfg.delivered_rate:
            return
        t_delivered = t_sent + cfg.delivered_delay_ms / 1000.0
        record["final_status"] = "delivered"
        push("delivered", t_delivered)
        if self._rng.random() < cfg.read_rate:
            record["final_status"] = "read"
            push("read", t_delivered + cfg.read_delay_ms / 1000.0)
        if self._rng.random() < cfg.reply_rate:
            record["replied"] = True
            push("reply", t_delivered + cfg.reply_delay_ms / 1000.0)

    async def start_webhooks(self) -> None:
        """Start posting webhooks (on the serving loop); reopen the record file a previous stop closed."""
        if self._record_file is None:
            self._open_record_file()
        await self.webhooks.start()

    async def stop_webhooks(self) -> None:
        """Cancel the dispatcher and in-flight POSTs, close the session and the record file."""
        await self.webhooks.stop()
        self._close_record_file()

    async def drain_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until every scheduled webhook was posted (or dropped). False if ``timeout`` elapsed first."""
        return await self.webhooks.drain(timeout)


def _guarded(wire: Wire, check: Callable[[], None], body: dict[str, Any]) -> Answer:
    """``body`` when ``check`` passes, else the refusal in the wire's format (a read: nothing recorded)."""
    try:
        check()
    except GraphError as err:
        status, refused = wire.refused(err, None)
        return status, refused, None
    return 200, body, None
