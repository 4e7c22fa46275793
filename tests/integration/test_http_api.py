"""The HTTP API against the service on the embedded broker: health, readiness, patients CRUD and
state, and bad requests answered with 400 and a reason, never a 500."""

from __future__ import annotations

import logging

import aiohttp
from aiokafka.errors import KafkaTimeoutError

from tests.support import RECORDS, start_with_dashboard, wait_for


async def test_patients_crud_state_and_bad_requests(broker, tiny_model_dir, data_dir, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir, speed=10.0, patients=1)
    url = f"http://127.0.0.1:{settings.http_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method: str, path: str, **kw) -> tuple[int, dict]:
                async with http.request(method, url + path, **kw) as r:
                    return r.status, await r.json(content_type=None)

            assert await call("GET", "/healthz") == (200, {"status": "ok"})
            status, body = await call("GET", "/readyz")
            assert status == 200 and body["ready"] and body["patients"] == 1

            # onboard, as a client would: accepted as an event, visible once applied
            status, body = await call("POST", "/patients", json={"patient_id": "bed-9", "reference": {"wfdb": RECORDS[1]},
                                                                 "state": {"statements": {"SR": 1}, "heart_rate": 64}})
            assert status == 202 and body["patient_id"] == "bed-9" and body["event_id"], body
            await wait_for(lambda: "bed-9" in svc.streams)
            status, body = await call("GET", "/patients/bed-9")
            assert status == 200 and body["state"]["heart_rate"] == 64 and body["model_version"]
            status, body = await call("GET", "/patients")
            assert sorted(p["patient_id"] for p in body["patients"]) == ["bed-0", "bed-9"]

            # change its state; the current state follows
            status, body = await call("POST", "/patients/bed-9/state",
                                      json={"state": {"statements": {"AFIB": 1}, "heart_rate": 118, "contrast": True}})
            assert status == 202 and body["state"]["statements"] == {"AFIB": 1.0} and body["state"]["contrast"] is True
            await wait_for(lambda: svc.registry.get("bed-9").state["statements"] == {"AFIB": 1.0})
            assert svc.registry.get("bed-9").state["contrast"] is True  # kept with the state
            assert (await call("GET", "/patients/bed-9"))[1]["state"]["heart_rate"] == 118

            # bad requests: 400 with a reason, and nothing sent
            bad = [("POST", "/patients", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
                   ("POST", "/patients", {"data": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}),
                   ("POST", "/patients", {"data": b"[" * 200_000 + b"]" * 200_000, "headers": {"Content-Type": "application/json"}}),
                   ("POST", "/patients", {"json": [1, 2]}),
                   ("POST", "/patients", {"json": {"reference": {"wfdb": RECORDS[0]}}}),
                   ("POST", "/patients", {"json": {"patient_id": "bad id!", "reference": {"wfdb": RECORDS[0]}}}),
                   ("POST", "/patients", {"json": {"patient_id": "bed-8"}}),
                   ("POST", "/patients/bed-9/state", {"json": {"state": {"statements": {"NOPE": 1}}}}),
                   ("POST", "/patients/bed-9/state", {"json": {"state": {"heart_rate": 1e999}}}),
                   ("POST", "/patients/bed-9/state", {"json": {"state": {"age": -3}}}),
                   ("POST", "/patients/bed-9/state", {"json": {"state": {"contrast": "strong"}}}),
                   ("POST", "/patients/bed-9/state", {"json": {}}),
                   ("POST", "/patients/bed-9/state", {"json": {"rhythm": {"name": "vt", "rate": 400}}}),
                   ("POST", "/patients/bed-9/state", {"json": {"rhythm": {"name": "vt", "rate": 180}}}),
                   # pulses without capture: a stream at 250 Hz cannot carry them (render --fs can)
                   ("POST", "/patients/bed-9/state", {"json": {"rhythm": {"name": "asystole", "rate": 60}}}),
                   ("POST", "/patients/bed-9/state", {"data": b"[]", "headers": {"Content-Type": "application/json"}}),
                   # artifacts: a bad one, and any while this deployment's rhythm layer is off
                   ("POST", "/patients/bed-9/artifacts", {"json": {"artifact": {"kind": "smoke", "duration": 3}}}),
                   ("POST", "/patients/bed-9/artifacts", {"json": {"artifact": {"kind": "ma", "duration": 3}}}),
                   ("POST", "/patients/bed-9/artifacts", {"json": {"artifact": {"kind": "ma", "snr": 6, "duration": 3}}}),
                   ("POST", "/patients/bed-9/artifacts", {"json": {}})]
            for method, path, kw in bad:
                status, body = await call(method, path, **kw)
                assert status == 400 and body["error"], (path, kw, status, body)
            # a write that is not application/json (a form, text/plain: no CORS preflight) is refused
            status, body = await call("POST", "/patients/bed-9/state", data=b'{"state": {"heart_rate": 99}}')
            assert status == 415 and body["error"]
            state = svc.registry.get("bed-9").state
            assert (state["statements"], state["heart_rate"]) == ({"AFIB": 1.0}, 118.0)

            assert (await call("GET", "/patients/ghost"))[0] == 404

            # the records a page onboards from: 40 held-out PTB-XL patients and a minute of 8
            # MIT-BIH records; a data folder that cannot be read answers without its error text
            status, body = await call("GET", "/api/records")
            refs = [r["reference"] for r in body["records"]]
            assert status == 200 and len(refs) == 48 and sum(r.get("seconds") == 60 for r in refs) == 8, body
            data, svc.settings.data_dir = svc.settings.data_dir, tmp_path / "no-data"
            status, body = await call("GET", "/api/records")
            svc.settings.data_dir = data
            assert status == 200 and body["records"] == [] and "no-data" not in body["error"], body

            # the broker not taking the event: 503 with the reason (the client may send it again)
            async def unreachable(ev):
                raise KafkaTimeoutError()

            send_event, svc.send_event = svc.send_event, unreachable
            status, body = await call("POST", "/patients/bed-9/state", json={"state": {"heart_rate": 90}})
            svc.send_event = send_event
            # the reason, without the exception's own text (it stays in the log)
            assert status == 503 and "send it again" in body["error"] and "Kafka" not in body["error"], (status, body)

            # a change scheduled ahead: listed as such until it holds, the stream goes on as it was
            later = (await call("GET", "/patients/bed-9"))[1]["stream_time"] + 600  # 60 s at x10
            status, _ = await call("POST", "/patients/bed-9/state", json={
                "event_id": "sched-1", "effective_time": later, "state": {"statements": {"SR": 1}, "heart_rate": 60}})
            assert status == 202
            await wait_for(lambda: svc.registry.get("bed-9").state_event_id == "sched-1")
            seq = svc.streams["bed-9"].p.next_seq
            await wait_for(lambda: svc.streams["bed-9"].p.next_seq >= seq + 2)  # the stream goes on
            view = (await call("GET", "/patients/bed-9"))[1]
            assert [(h["event_id"], h["at"]) for h in view["scheduled"]] == [("sched-1", later)]
            assert view["published_state"]["heart_rate"] == 118  # in AFIB until then

            # remove: the stream stops, the patient is gone, and live subscribers are told
            await wait_for(lambda: svc.streams["bed-9"].p.next_seq >= 2)  # an interval to close
            ws = await http.ws_connect(url + "/ws?patients=bed-9")
            assert (await ws.receive_json(timeout=10))["type"] == "hello"  # subscribed from here on
            assert (await call("DELETE", "/patients/bed-9"))[0] == 202
            await wait_for(lambda: "bed-9" not in svc.streams and svc.registry.get("bed-9") is None)
            assert (await call("GET", "/patients/bed-9"))[0] == 404
            frames = []
            while not frames or frames[-1]["type"] != "removed":
                frames.append(await ws.receive_json(timeout=10))
            assert frames[-1] == {"type": "removed", "patient_id": "bed-9"}
            # its last interval was closed before: the annotation with an end time came first
            assert any(f["type"] == "annotation" and f["end_time"] is not None for f in frames)
            await ws.close()

            # the access log has the API's requests, not the probes and scrapes
            async with http.get(url + "/metrics") as r:
                assert r.status == 200
            logged = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
            assert any('"DELETE /patients/bed-9 ' in line for line in logged), logged[-5:]
            assert not any(probe in line for line in logged for probe in ("/healthz", "/readyz", "/metrics"))
    finally:
        await runner.cleanup()
        await hub.close()
        await svc.stop()
