"""The CLI as a user runs it, in processes of its own: the README's main command (`demo`, with
its own embedded broker), `serve` stopped by SIGTERM the way an orchestrator stops it, and the
clients (`register`, `send`, `tail`, `play`, `monitor`) beside a running service."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import aiohttp
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.conditions import CardiacState
from stream.events import Event
from stream.kafka.embedded import free_port
from stream.segments import decode_segment
from tests.support import RECORDS, read_all, start_with_dashboard, wait_for
from twin_engine.config import KafkaConfig
from twin_engine.metrics import scraped_value


def _get(url: str) -> str:
    try:
        return urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return ""


def test_demo_runs_the_whole_service_on_its_own_broker(tiny_model_dir, data_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "TWIN_ENGINE_MODEL_PATH": str(tiny_model_dir), "TWIN_ENGINE_DATA_DIR": str(data_dir),
           "TWIN_ENGINE_CACHE_DIR": str(tmp_path), "TWIN_ENGINE_HTTP_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "twin_engine.ops.cli", "demo", "--patients", "3", "--duration", "30"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _get(f"http://127.0.0.1:{port}/metrics")
            if scraped_value(seen, "twin_live_patients") == 3 and scraped_value(seen, "twin_segments_published_total") >= 6:
                break
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert scraped_value(seen, "twin_live_patients") == 3, seen[-2000:]
    assert scraped_value(seen, "twin_segments_published_total") >= 6
    assert "demo: onboarded 3 patients" in out
    assert "embedded broker keeps every record in memory, about 141 MB an hour for 3 patients" in out
    assert f"dashboard http://127.0.0.1:{port}/" in out
    # the scenario moves a patient every 15 s: at least one change within the 30 s
    assert re.search(r"demo: bed-0[1-3] -> \S+ \d+ bpm", out), out[-3000:]
    assert "Traceback" not in out


async def test_sigterm_finishes_segments_commits_and_exits(broker, tiny_model_dir, data_dir, tmp_path):
    port = free_port()
    k = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, partitions=4).namespaced(f"sig{uuid.uuid4().hex[:6]}")
    env = {**os.environ, "TWIN_ENGINE_MODEL_PATH": str(tiny_model_dir), "TWIN_ENGINE_DATA_DIR": str(data_dir),
           "TWIN_ENGINE_CACHE_DIR": str(tmp_path), "TWIN_ENGINE_HTTP_PORT": str(port),
           "TWIN_ENGINE_SPEED": "10", "TWIN_ENGINE_SEGMENT_SECONDS": "1",
           "TWIN_ENGINE_WFDB_EXPORT_DIR": str(tmp_path / "wfdb"), **k.to_env()}
    proc = subprocess.Popen([sys.executable, "-m", "twin_engine.ops.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = f"http://127.0.0.1:{port}/metrics"
    loop = asyncio.get_running_loop()

    async def until(cond, timeout=90.0):
        end = loop.time() + timeout
        while not cond():
            assert proc.poll() is None and loop.time() < end, proc.communicate(timeout=30)[0][-3000:] if proc.poll() is not None else "timed out"
            await asyncio.sleep(0.3)

    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    try:
        await until(lambda: _get(f"http://127.0.0.1:{port}/readyz") != "")
        await prod.start()
        for i, rec in enumerate(["ptbxl-subset/records250/00000/00024_250", "ptbxl-subset/records250/00000/00043_250"]):
            ev = Event(f"reg-{i}", f"bed-{i}", "register", CardiacState({"NORM": 1.0}, 70), reference={"wfdb": rec})
            await prod.send_and_wait(k.topic_events, ev.to_json(), key=ev.patient_id.encode())
        await until(lambda: scraped_value(_get(metrics), "twin_segments_published_total") >= 6)
        ev = Event("afib", "bed-0", "condition", CardiacState({"AFIB": 1.0}, 120))
        await prod.send_and_wait(k.topic_events, ev.to_json(), key=b"bed-0")
        await until(lambda: scraped_value(_get(metrics), "twin_event_to_effect_seconds_count") >= 1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        await prod.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "shutting down" in out and "Traceback" not in out

    # every event it consumed is committed: a successor in the group starts after them
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(k.topic_events, p) for p in range(4)]
        ends = await c.end_offsets(tps)
        assert {tp: await c.committed(tp) or 0 for tp in tps} == ends
    finally:
        await c.stop()
    segs = [decode_segment(m.value) for m in await read_all(broker.bootstrap_servers, k.topic_segments)]
    # the segments that went out are whole and in order, the AFIB change among them
    for pid in ("bed-0", "bed-1"):
        mine = [s for s in segs if s.patient_id == pid]
        assert [s.seq for s in mine] == list(range(len(mine))) and len(mine) >= 3
        assert all(s.samples.shape == (250, 12) for s in mine)
    assert any(s.event_id == "afib" for s in segs if s.patient_id == "bed-0")

    # the WFDB export written at shutdown holds each stream as published, its states annotated
    import wfdb

    assert f"wrote WFDB record {tmp_path / 'wfdb' / 'bed_0'}" in out
    mine = sorted((s for s in segs if s.patient_id == "bed-0"), key=lambda s: s.seq)
    rec = wfdb.rdrecord(str(tmp_path / "wfdb" / "bed_0"))
    assert rec.fs == 250 and rec.sig_len == 250 * len(mine) and rec.n_sig == 12
    assert abs(rec.p_signal - np.concatenate([s.samples for s in mine])).max() < 1e-6
    ann = wfdb.rdann(str(tmp_path / "wfdb" / "bed_0"), "state")
    afib_at = next(s.seq for s in mine if s.event_id == "afib") * 250
    assert list(ann.sample) == [0, afib_at] and ann.aux_note[1].startswith("(AFIB HR120")


async def test_cli_register_send_tail_against_a_running_service(broker, tiny_model_dir, data_dir, tmp_path):
    """`register`, `send` and `tail` in processes of their own, talking to a running service only
    through its topics; a bad statement or intensity is refused with a message, not a traceback."""
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir, speed=10.0, patients=0)
    k = settings.kafka
    env = {**os.environ, "TWIN_ENGINE_DATA_DIR": str(data_dir), **k.to_env()}

    async def cli(*args: str) -> subprocess.CompletedProcess:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "twin_engine.ops.cli", *args, env=env,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())

    try:
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)  # not a segment: tail skips it
        await prod.start()
        await prod.send_and_wait(k.topic_segments, b"{oops", key=b"bed-cli")
        await prod.send_and_wait(k.topic_events, b'{"schema_version": 1, "bad": true}', key=b"bed-cli")  # dead-lettered
        await prod.stop()
        r = await cli("register", "bed-cli", "--wfdb", RECORDS[0], "SR", "--hr", "66")
        assert r.returncode == 0 and "register bed-cli" in r.stdout, r.stderr[-2000:]
        await wait_for(lambda: "bed-cli" in svc.streams and svc.streams["bed-cli"].p.next_seq >= 2)
        r = await cli("send", "bed-cli", "AFIB", "PVC=0.5", "--hr", "121")
        assert r.returncode == 0 and "sent" in r.stdout, r.stderr[-2000:]
        await wait_for(lambda: svc.registry.get("bed-cli").state["statements"] == {"AFIB": 1.0, "PVC": 0.5})
        r = await cli("tail", "bed-cli", "--limit", "3", "--from-beginning")
        assert "skipped record" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        lines = [line for line in r.stdout.splitlines() if line.startswith("bed-cli seq=")]
        assert r.returncode == 0 and [int(re.search(r"seq=(\d+)", x).group(1)) for x in lines] == [0, 1, 2], r.stdout
        r = await cli("tail", "bed-cli", "--dead-letters", "--from-beginning", "--limit", "1")
        assert r.returncode == 0 and r.stdout.startswith(f"{k.topic_events}[") and '{"schema_version": 1, "bad": true}' in r.stdout, r
        assert "event_id must be" in r.stdout, r.stdout  # the reason
        for bad, says in ((["send", "bed-cli", "NOPE"], "NOPE"), (["send", "bed-cli", "AFIB=abc"], "AFIB=abc"),
                          (["send", "bed-cli", "AFIB", "--hr", "900"], "heart_rate")):
            r = await cli(*bad)
            assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr[-2000:])

        # `play`: a scenario's patient onboarded and its timeline scheduled
        scenario = tmp_path / "s.toml"
        scenario.write_text(f'[[patient]]\nid = "bed-play"\nwfdb = "{RECORDS[1]}"\n'
                            '[[change]]\nat = 4\npatient = "bed-play"\nstate = { statements = { AFIB = 1 }, heart_rate = 110 }\n'
                            '[[remove]]\nat = 3600\npatient = "bed-play"\n')
        r = await cli("play", str(scenario))
        assert r.returncode == 0 and "scheduled 2 changes for 1 patients" in r.stdout, (r.stdout, r.stderr[-2000:])
        assert "bed-play at 4 s: AFIB 110 bpm" in r.stdout and "bed-play at 3600 s: removed" in r.stdout, r.stdout
        await wait_for(lambda: "bed-play" in svc.streams and svc.streams["bed-play"].p.published_event_id is not None
                       and svc.registry.get("bed-play").state["heart_rate"] == 110
                       and svc.registry.get("bed-play").remove_at is not None)  # an hour of its stream ahead
        scenario.write_text('[[patient]]\nid = "bed-typo"\nwfdb = "no/such/record"\n')
        r = await cli("play", str(scenario), "--timeout", "60")  # refused: says why, no waiting it out
        assert r.returncode == 2 and "bed-typo: the service refused its registration: cannot read WFDB header" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

        # `monitor`: the patients and their states as the registry holds them, from another process
        port = free_port()
        mon = await asyncio.create_subprocess_exec(sys.executable, "-m", "twin_engine.ops.cli", "monitor", "--port", str(port),
                                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:  # the registry read to where it ended at start
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            end = asyncio.get_running_loop().time() + 60
            while not await ready():
                assert mon.returncode is None and asyncio.get_running_loop().time() < end
                await asyncio.sleep(0.3)
            async with http.get(f"http://127.0.0.1:{port}/patients") as resp:
                seen = (await resp.json())["patients"]
        assert [p["patient_id"] for p in seen] == ["bed-cli", "bed-play"] and seen[0]["state"]["heart_rate"] == 121, seen
        mon.send_signal(signal.SIGTERM)
        out = (await asyncio.wait_for(mon.communicate(), 30))[0].decode()
        assert mon.returncode == 0 and f"twin-engine monitor: dashboard http://127.0.0.1:{port}/" in out, out[-2000:]
        assert "Traceback" not in out, out[-2000:]
    finally:
        await runner.cleanup()
        await hub.close()
        await svc.stop()
