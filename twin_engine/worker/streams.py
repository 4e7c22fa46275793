"""The live patient streams of one worker, and the restored patients held back from streaming."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from models.amplitude import AmplitudeModel
from models.twin import TwinModel
from twin_engine.config import Settings
from twin_engine.metrics import Metrics
from twin_engine.registry import Patient
from twin_engine.worker.batcher import MicroBatcher
from twin_engine.worker.clock import StreamClock
from twin_engine.worker.publisher import Publisher
from twin_engine.worker.rhythm import StreamRhythm
from twin_engine.worker.stream import PatientStream

log = logging.getLogger(__name__)


class Streams(Mapping[str, PatientStream]):
    """One ``PatientStream`` per live patient, by patient id (a read-only mapping); ``held``
    says why a restored patient is not streamed.

    Args:
        settings: segment length, look-ahead.
        model: its sampling rate, leads, version and base-vector size.
        clock, batcher, publisher: what every stream shares.
        context_samples: the samples a segment continues (the generator's context).
        metrics: the live and held patient gauges.
        on_end: called with the patient id when a stream reaches its scheduled removal.
    """

    def __init__(self, settings: Settings, model: TwinModel, clock: StreamClock, batcher: MicroBatcher,
                 publisher: Publisher, context_samples: int, metrics: Metrics,
                 on_end: Callable[[str], None]) -> None:
        self.settings, self.model, self.clock, self.batcher = settings, model, clock, batcher
        self.publisher, self.context_samples, self.metrics, self.on_end = publisher, context_samples, metrics, on_end
        self.segment_samples = int(round(settings.segment_seconds * model.meta.fs))
        self.live: dict[str, PatientStream] = {}
        # restored patients whose base vector does not fit this model, and why: kept in the
        # registry unstreamed until registered again (or removed)
        self.held: dict[str, str] = {}
        self.amplitude = AmplitudeModel.for_model(settings.model_path)

    def __getitem__(self, pid: str) -> PatientStream:
        return self.live[pid]

    def __iter__(self) -> Iterator[str]:
        return iter(self.live)

    def __len__(self) -> int:
        return len(self.live)

    def start(self, p: Patient) -> None:
        """Stream ``p`` (from its position); it is no longer held."""
        s, meta = self.settings, self.model.meta
        if p.mv_scale is None or len(p.mv_scale) != len(meta.leads):
            # a record from before segments were in mV: its amplitudes predicted, and said so
            p.mv_scale = [round(float(v), 5) for v in self.amplitude.predict(p.cardiac_state)]
            p.mv_source = "amplitude model"
        stream = PatientStream(
            p, clock=self.clock, batcher=self.batcher, fs=meta.fs, segment_samples=self.segment_samples,
            context_samples=self.context_samples, lookahead=s.lookahead_segments, leads=meta.leads,
            model_version=meta.version, publish=self.publisher.publish, metrics=self.metrics,
            on_end=lambda: self.on_end(p.patient_id),
            rhythm=StreamRhythm(p.patient_id, p.base(), meta.fs, self.batcher.submit, p.rhythm_state)
            if s.rhythm_layer else None, nstdb=Path(s.data_dir) / "nstdb")
        self.live[p.patient_id] = stream
        self.held.pop(p.patient_id, None)
        stream.start()
        self._gauges()

    def start_or_hold(self, p: Patient) -> None:
        """Stream a restored patient, or hold it if its base vector cannot drive this model."""
        why = self.unfit(p)
        if why is None:
            self.start(p)
        else:
            self.held[p.patient_id] = why
            log.error("%s is held, not streamed: %s", p.patient_id, why)
            self._gauges()

    async def stop(self, pid: str) -> None:
        """Stop the patient's stream, if it has one; it is no longer held either."""
        stream = self.live.pop(pid, None)
        if stream is not None:
            await stream.stop()
        self.held.pop(pid, None)
        self._gauges()

    async def stop_where(self, keep: Callable[[str], bool]) -> None:
        """Stop (and forget held) every patient for which ``keep`` is false."""
        gone = [pid for pid in self.live if not keep(pid)]
        await asyncio.gather(*(self.live.pop(pid).stop() for pid in gone))
        for pid in [pid for pid in self.held if not keep(pid)]:
            del self.held[pid]
        self._gauges()

    def unfit(self, p: Patient) -> str | None:
        """Why a restored patient's base vector cannot drive this model (None: it can). Streamed
        anyway, a vector of another size would fail every generation batch it joined, and one
        from another encoder would make a different person's ECG under the old name."""
        dim, mine = self.model.ibe.cfg.base_dim, self.model.encoder_id
        if len(p.base_vector) != dim:
            why = f"its base vector has {len(p.base_vector)} numbers, this model's have {dim}"
        elif p.encoder_id and p.encoder_id != mine:
            why = (f"its base vector comes from encoder {p.encoder_id} (model {p.model_version}), "
                   f"this model ({self.model.meta.version}) has encoder {mine}")
        else:
            return None
        return f"{why}; register it again from its reference ECG"

    def _gauges(self) -> None:
        self.metrics.live_patients.set(len(self.live))
        self.metrics.held_patients.set(len(self.held))
