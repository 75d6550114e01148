"""Provider clients on the wire: Meta's format against the sandbox, Evolution's against a local peer.

Evolution itself (a Node.js WhatsApp-Web gateway) cannot run here, so its peer is a small real HTTP
server that answers in Evolution's documented shapes (shared/reference/whatsapp-api.md §5).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from campaigns.sending.providers import Credentials, OutboundMessage, build_provider


async def _send(provider, msg, timeout=5.0):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        return await provider.send(session, msg)


def test_meta_text_and_template_bodies_and_graph_errors(sandbox):
    sandbox.set_token("777", "t")
    sandbox.configure(rules=[{"match": "9$", "code": 131056}, {"match": "8$", "code": 2, "http_status": 503}])
    provider = build_provider("meta_cloud", Credentials("777", "t", sandbox.url))
    ok = asyncio.run(_send(provider, OutboundMessage(41, "+5511900000001", "text", text="Olá")))
    assert ok.ok and ok.message_id.startswith("wamid.")
    template = {
        "name": "promo",
        "language": {"code": "pt_BR"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
    }
    assert asyncio.run(_send(provider, OutboundMessage(42, "+5511900000002", "template", template=template))).ok
    sent = {m["biz_opaque_callback_data"]: m for m in sandbox.messages()}
    assert sent["pytake:41"]["to"] == "5511900000001" and sent["pytake:41"]["body"] == "Olá"
    assert sent["pytake:42"]["template"]["name"] == "promo"

    pair = asyncio.run(_send(provider, OutboundMessage(43, "+5511900000009", "text", text="x")))
    assert (pair.ok, pair.error_code, pair.ambiguous, pair.unavailable) == (False, 131056, False, False)
    assert pair.error_message
    # Graph's "service temporarily unavailable": the provider's state, not the recipient's; never accepted.
    down = asyncio.run(_send(provider, OutboundMessage(47, "+5511900000008", "text", text="x")))
    assert (down.ok, down.error_code, down.http_status) == (False, 2, 503)
    assert (down.ambiguous, down.unavailable) == (False, True)

    wrong = build_provider("meta_cloud", Credentials("777", "expired", sandbox.url))
    auth = asyncio.run(_send(wrong, OutboundMessage(44, "+5511900000004", "text", text="x")))
    assert (auth.ok, auth.error_code, auth.http_status, auth.unavailable) == (False, 190, 401, False)


def test_a_timeout_after_the_request_left_is_ambiguous(sandbox):
    sandbox.configure(latency_ms=1500)
    provider = build_provider("sandbox", Credentials("778", "t", sandbox.url))
    result = asyncio.run(_send(provider, OutboundMessage(45, "+5511900000005", "text", text="x"), timeout=0.3))
    assert not result.ok and result.ambiguous and result.unavailable
    refused = build_provider("sandbox", Credentials("778", "t", "http://127.0.0.1:9"))
    down = asyncio.run(_send(refused, OutboundMessage(46, "+5511900000006", "text", text="x")))
    assert not down.ok and not down.ambiguous and "connection failed" in down.error_message
    assert down.unavailable  # unreachable: an outage when every send finds it so


def test_evolution_send_text_with_apikey_and_its_errors():
    seen: list[dict] = []

    async def send_text(request: web.Request) -> web.Response:
        if request.headers.get("apikey") != "evo-key":
            return web.json_response({"status": 401, "error": "Unauthorized"}, status=401)
        body = await request.json()
        seen.append({"instance": request.match_info["instance"], **body})
        if body["number"].endswith("5"):  # the gateway down
            return web.json_response({"status": 503, "error": "Service Unavailable"}, status=503)
        if body["number"].endswith("0"):
            return web.json_response(
                {
                    "status": 400,
                    "error": "Bad Request",
                    "response": {
                        "message": [
                            {"exists": False, "jid": f"{body['number']}@s.whatsapp.net", "number": body["number"]}
                        ]
                    },
                },
                status=400,
            )
        return web.json_response(
            {
                "key": {"remoteJid": f"{body['number']}@s.whatsapp.net", "fromMe": True, "id": "3EB0ABC"},
                "status": "PENDING",
            },
            status=201,
        )

    async def main():
        app = web.Application()
        app.router.add_post("/message/sendText/{instance}", send_text)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        good = build_provider("evolution", Credentials("loja1", "evo-key", url))
        bad_key = build_provider("evolution", Credentials("loja1", "nope", url))
        results = [
            await _send(good, OutboundMessage(1, "+5511900000001", "text", text="Olá")),
            await _send(good, OutboundMessage(2, "+5511900000000", "text", text="Olá")),
            await _send(bad_key, OutboundMessage(3, "+5511900000003", "text", text="Olá")),
            await _send(good, OutboundMessage(4, "+5511900000005", "text", text="Olá")),
        ]
        await runner.cleanup()
        return results

    ok, not_on_whatsapp, unauthorized, gateway_down = asyncio.run(main())
    assert ok.ok and ok.message_id == "3EB0ABC"
    assert seen[0] == {"instance": "loja1", "number": "5511900000001", "text": "Olá"}
    assert (not_on_whatsapp.ok, not_on_whatsapp.error_code) == (False, 131026)
    assert "exists" in not_on_whatsapp.error_message
    assert unauthorized.error_code == 190
    assert not_on_whatsapp.unavailable is unauthorized.unavailable is False
    assert (gateway_down.error_code, gateway_down.ambiguous, gateway_down.unavailable) == (None, True, True)
    assert not build_provider("evolution", Credentials("x", "k", "http://e")).supports("template")
