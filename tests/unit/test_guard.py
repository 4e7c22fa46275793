"""The API's guard (twin_engine.web.auth): tokens and roles, Host and Origin, content type, limits;
the WebSocket gets only what it subscribed to. A stand-in frontend: nothing here needs a broker."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from stream.events import Event
from stream.kafka.embedded import free_port
from stream.segments import Segment
from stream.subscribers import SubscriberHub
from twin_engine.config import ConfigError, load_settings
from twin_engine.web.auth import Tokens, check_exposure, is_loopback
from twin_engine.web.dashboard import page_hello
from twin_engine.web.http_api import serve_http

WRITE, READ = "w" * 24, "r" * 24


class Front:
    """The least a ``Frontend`` is: events it was sent are kept."""

    def __init__(self, settings) -> None:
        self.settings, self.metrics, self.ready = settings, type("M", (), {"exposition": lambda s: b""})(), asyncio.Event()
        self.vocab, self.fs, self.sent = ("NORM", "SR", "AFIB"), 250, []
        self.ready.set()

    def patient_ids(self):
        return ["bed-1"]

    def patient_view(self, pid):
        return {"patient_id": pid} if pid == "bed-1" else None

    def why_unknown(self, pid):
        return "unknown patient"

    def unhealthy(self):
        return None

    async def send_event(self, ev: Event) -> None:
        self.sent.append(ev)


async def _serve(**kw):
    settings = load_settings(env={}, http_port=free_port(), **kw)
    front = Front(settings)
    hub = SubscriberHub(max_clients=kw.get("ws_max_clients", 256), max_subscription=kw.get("ws_max_subscription", 1000),
                        hello=page_hello(settings, front.vocab))
    runner = await serve_http(front, "127.0.0.1", settings.http_port, hub)
    return front, hub, runner, f"http://127.0.0.1:{settings.http_port}"


async def test_tokens_roles_content_type_and_origin():
    front, hub, runner, url = await _serve(api_tokens=f"write:{WRITE},read:{READ}", metrics_public=False)
    state = {"state": {"statements": {"AFIB": 1}, "heart_rate": 110}}
    try:
        async with aiohttp.ClientSession() as http:
            async def status(method, path, token=None, **kw):
                headers = kw.pop("headers", {})
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with http.request(method, url + path, headers=headers, **kw) as r:
                    return r.status

            assert await status("GET", "/healthz") == 200 and await status("GET", "/readyz") == 200
            assert await status("GET", "/") == 200  # the page itself; what it fetches is checked
            assert await status("GET", "/patients") == 401
            assert await status("GET", "/patients", "x" * 24) == 401
            assert await status("GET", "/metrics") == 401 and await status("GET", "/metrics", READ) == 200
            assert await status("GET", "/patients", READ) == 200
            assert await status("POST", "/patients/bed-1/state", READ, json=state) == 403
            assert await status("DELETE", "/patients/bed-1", READ) == 403
            assert await status("POST", "/patients/bed-1/state", WRITE, json=state) == 202
            # a form or text/plain POST needs no CORS preflight: refused
            assert await status("POST", "/patients/bed-1/state", WRITE, data=json.dumps(state),
                                headers={"Content-Type": "text/plain"}) == 415
            # a page the user merely visits, sending the request from its own origin
            assert await status("POST", "/patients/bed-1/state", WRITE, json=state,
                                headers={"Origin": "http://evil.example"}) == 403
            assert await status("GET", "/patients", READ, headers={"Origin": url}) == 200
            assert await status("POST", "/patients", WRITE, data=b"{" * (2 << 20),
                                headers={"Content-Type": "application/json"}) == 413
            assert len(front.sent) == 1 and front.sent[0].type == "condition"
    finally:
        await runner.cleanup()


async def test_no_tokens_loopback_only_and_host_checked():
    with pytest.raises(ConfigError, match="no API tokens"):
        check_exposure(load_settings(env={}, http_host="0.0.0.0"), Tokens())
    check_exposure(load_settings(env={}, http_host="0.0.0.0", api_tokens=f"write:{WRITE}"),
                   Tokens.from_settings(load_settings(env={}, api_tokens=f"write:{WRITE}")))
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("10.0.0.1")
    with pytest.raises(ConfigError, match="at least 16"):
        Tokens.from_settings(load_settings(env={}, api_tokens="write:short"))
    front, hub, runner, url = await _serve()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/patients") as r:
                assert r.status == 200
            # DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends its Host
            async with http.get(url + "/patients", headers={"Host": "rebind.evil.example"}) as r:
                assert r.status == 421
            async with http.get(url + "/healthz", headers={"Host": "rebind.evil.example"}) as r:
                assert r.status == 200  # probes answer whatever name an orchestrator uses
    finally:
        await runner.cleanup()


async def test_websocket_token_origin_and_subscription_limits():
    front, hub, runner, url = await _serve(api_tokens=f"read:{READ}", ws_max_clients=2, ws_max_subscription=3)
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(url + "/ws?patients=*")
            assert e.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(url + "/ws?patients=*", protocols=("twin-engine", f"bearer.{READ}"),
                                      origin="http://evil.example")
            assert e.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(url + "/ws?patients=a,b,c,d", protocols=("twin-engine", f"bearer.{READ}"))
            assert e.value.status == 400
            ws = await http.ws_connect(url + "/ws?patients=bed-1", protocols=("twin-engine", f"bearer.{READ}"))
            assert ws.protocol == "twin-engine"
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
            ws2 = await http.ws_connect(url + "/ws", headers={"Authorization": f"Bearer {READ}"})
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(url + "/ws", headers={"Authorization": f"Bearer {READ}"})
            assert e.value.status == 503  # two clients at most
            await ws2.send_json({"subscribe": ["a", "b", "c", "d"]})
            await ws2.receive_json(timeout=5)  # hello
            err = await ws2.receive_json(timeout=5)
            assert err["type"] == "error" and "at most 3" in err["error"]
            await ws.close()
            await ws2.close()
    finally:
        await runner.cleanup()


def _segment(pid: str, seq: int) -> Segment:
    return Segment(pid, seq, 1000.0 + seq, 250, ["I"], np.zeros((10, 1), np.float32), {"heart_rate": 70}, "e", "v")


async def test_a_filtered_client_gets_only_its_patients_from_the_first_frame():
    """Deterministic, where the page test raced: segments of every patient are offered while the
    client connects; one that named bed-1 at connect never sees another patient's frame."""
    front, hub, runner, url = await _serve()
    stop = asyncio.Event()

    async def offer():
        seq = 0
        while not stop.is_set():
            for pid in ("bed-0", "bed-1", "bed-2"):
                await hub.segment(_segment(pid, seq))
            seq += 1
            await asyncio.sleep(0.001)

    feeder = asyncio.create_task(offer())
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                ws = await http.ws_connect(url + "/ws?patients=bed-1")
                seen = set()
                for _ in range(15):
                    f = await ws.receive_json(timeout=5)
                    if f["type"] == "segment":
                        seen.add(f["patient_id"])
                await ws.close()
                assert seen == {"bed-1"}
            unsubscribed = await http.ws_connect(url + "/ws")  # names nothing: gets nothing but hello
            assert (await unsubscribed.receive_json(timeout=5))["type"] == "hello"
            with pytest.raises(asyncio.TimeoutError):
                await unsubscribed.receive_json(timeout=0.5)
            await unsubscribed.close()
    finally:
        stop.set()
        await feeder
        await runner.cleanup()


def test_kafka_security_settings_checked_and_password_kept_out_of_repr(tmp_path):
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        load_settings(env={"TWIN_ENGINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    with pytest.raises(ConfigError, match="username"):
        load_settings(env={"TWIN_ENGINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                           "TWIN_ENGINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    with pytest.raises(ConfigError, match="ssl_cafile"):
        load_settings(env={"TWIN_ENGINE_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "TWIN_ENGINE_KAFKA_SSL_CAFILE": str(tmp_path / "missing.pem")})
    s = load_settings(env={"TWIN_ENGINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "TWIN_ENGINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "TWIN_ENGINE_KAFKA_SASL_PLAIN_USERNAME": "twin",
                           "TWIN_ENGINE_KAFKA_SASL_PLAIN_PASSWORD": "hunter2-secret",
                           "TWIN_ENGINE_API_TOKENS": f"write:{WRITE}"})
    assert "hunter2-secret" not in repr(s) and WRITE not in repr(s)
