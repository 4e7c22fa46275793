import asyncio
import json

import numpy as np
import wfdb

from stream.segments import Segment, annotation, decode_segment
from twin_engine.worker.sinks import WfdbSink

LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _seg(seq, x, state):
    return Segment("bed 1", seq, 1000.0 + seq, 250, LEADS, x, state, f"e{seq}", "m")


def test_segment_round_trip_quantises_to_gain():
    x = np.random.default_rng(0).standard_normal((250, 12)).astype(np.float32)
    seg = decode_segment(_seg(3, x, {"heart_rate": 70}).to_json())
    assert seg.seq == 3 and seg.leads == LEADS
    assert np.abs(seg.samples - x).max() <= 0.5 / 1000 + 1e-6


def test_segment_json_is_the_plain_encoding_even_with_hostile_strings():
    # to_json splices the samples in; whatever a patient id or state holds, the value must be
    # exactly what the JSON encoder makes of the fields
    x = np.random.default_rng(1).standard_normal((250, 12)).astype(np.float32)
    seg = Segment('bed "samples_b64": "" 7', 1, 1.0, 250, LEADS, x, {"note": '"samples_b64": ""\\'}, None, "m")
    assert json.loads(seg.to_json()) == seg.to_dict()
    assert json.loads(seg.to_json(type="segment")) == {"type": "segment", **seg.to_dict()}


def test_wfdb_export_with_annotations(tmp_path):
    sink = WfdbSink(tmp_path)
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((250, 12)).astype(np.float32) for _ in range(3)]

    async def feed():
        await sink.annotation(annotation("bed 1", "e0", {"statements": {"SR": 1}, "heart_rate": 70}, 1000.0, 0))
        for i, c in enumerate(chunks):
            if i == 2:
                await sink.annotation(annotation("bed 1", "e2", {"statements": {"AFIB": 1}, "heart_rate": 110}, 1002.0, 2))
            await sink.segment(_seg(i, c, {}))

    asyncio.run(feed())
    (path,) = sink.close()
    sig, fields = wfdb.rdsamp(str(path))
    assert sig.shape == (750, 12) and fields["fs"] == 250
    assert np.abs(sig - np.concatenate(chunks)).max() < 1e-3
    ann = wfdb.rdann(str(path), "state")
    assert list(ann.sample) == [0, 500]
    assert ann.aux_note[1].startswith("(AFIB")


def test_wfdb_export_streams_to_disk_and_a_removed_patient_is_readable_at_once(tmp_path):
    """Samples reach the .dat file as they are published (a long run holds no segments in
    memory); the removal of a patient completes its record; a later run replaces it."""
    rng = np.random.default_rng(2)
    chunks = [rng.standard_normal((250, 12)).astype(np.float32) * 3 for _ in range(4)]

    async def feed(sink, n):
        for i in range(n):
            await sink.segment(_seg(i, chunks[i], {}))

    sink = WfdbSink(tmp_path, patients={"bed 1"})
    asyncio.run(feed(sink, 3))
    assert (tmp_path / "bed_1.dat").stat().st_size == 3 * 250 * 12 * 2 and not (tmp_path / "bed_1.hea").exists()
    asyncio.run(sink.removed("bed 1"))
    rec = wfdb.rdrecord(str(tmp_path / "bed_1"), physical=False)
    want = np.concatenate([_seg(i, chunks[i], {}).quantized for i in range(3)])
    assert np.array_equal(rec.d_signal, want)
    assert rec.init_value == [int(v) for v in want[0]]
    assert rec.checksum == [int(v) for v in want.astype(np.int64).sum(0) % 65536]

    again = WfdbSink(tmp_path)
    asyncio.run(feed(again, 1))
    (path,) = again.close()
    assert wfdb.rdsamp(str(path))[0].shape == (250, 12)


def test_wfdb_export_writes_beats_and_rhythm_changes_in_mit_bih_codes(tmp_path):
    from stream.segments import BeatsRecord, RhythmRecord

    sink = WfdbSink(tmp_path)
    chunks = [np.zeros((250, 12), np.float32) for _ in range(3)]

    async def feed():
        await sink.annotation(RhythmRecord("bed 1", "sinus", "(N", 1000.0))
        for i, c in enumerate(chunks):
            if i == 1:  # VT from 1.5 s into the stream, in the middle of the second segment
                await sink.annotation(RhythmRecord("bed 1", "sinus", "(N", 1000.0, 1001.5))
                await sink.annotation(RhythmRecord("bed 1", "vt", "(VT", 1001.5))
            beats = ((100, "N"),) if i == 0 else ((50, "N"), (200, "V")) if i == 1 else ((80, "V"),)
            await sink.annotation(BeatsRecord("bed 1", i, 1000.0 + i, 250, beats))
            await sink.segment(_seg(i, c, {}))

    asyncio.run(feed())
    (path,) = sink.close()
    ann = wfdb.rdann(str(path), "atr")
    assert list(zip(ann.sample, ann.symbol, strict=True)) == [(0, "+"), (100, "N"), (300, "N"), (375, "+"), (450, "V"),
                                                              (580, "V")]
    assert [a for a, sym in zip(ann.aux_note, ann.symbol, strict=True) if sym == "+"] == ["(N", "(VT"]


def test_wfdb_export_keeps_an_artifact_that_begins_in_the_first_segment(tmp_path):
    """Its record does not exist yet when the artifact's annotation comes (before the segment's
    samples): the first segment's beats say where the record starts."""
    from stream.segments import ArtifactRecord, BeatsRecord

    sink = WfdbSink(tmp_path)

    async def feed():
        for i in range(3):
            await sink.annotation(BeatsRecord("bed 1", i, 1000.0 + i, 250, ((100, "N"),)))
            if i == 0:
                await sink.annotation(ArtifactRecord("bed 1", "a-1", "ma", 1000.4, 1002.2, ("II",), 6.0))
            await sink.segment(_seg(i, np.zeros((250, 12), np.float32), {}))

    asyncio.run(feed())
    (path,) = sink.close()
    ann = wfdb.rdann(str(path), "atr")
    assert [(s, a) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note, strict=True) if sym == "~"] == \
        [(100, "ma 6dB II"), (550, "clean")]
