"""The ``twin-engine`` command line. Each subcommand imports what it needs lazily, so that
``doctor`` works even where torch or the broker is broken.

Over 300 lines on purpose: the whole command line (parser and one short function per
subcommand, each handing over to the module that does the work) reads best in one place."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from models.conditions import ConditionError
from twin_engine.config import ConfigError, Settings, load_settings
from twin_engine.errors import FATAL_ERRORS
from twin_engine.ops.scenario import ScenarioError


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_doctor(args: argparse.Namespace) -> int:
    from twin_engine.ops.doctor import print_report

    print_report(_settings(args))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.kafka.embedded import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as broker:
        print(f"Kafka-protocol broker (Tansu) listening on {broker.bootstrap_servers}; Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.training.stages import main as train_main

    return train_main(args, _settings(args))


def cmd_package(args: argparse.Namespace) -> int:
    """A training run -> a shippable model folder (fp16 weights, training record kept)."""
    import json
    import shutil
    from pathlib import Path

    from models.twin import TwinModel

    run, out = Path(args.run), Path(args.out)
    model = TwinModel.load(run)
    model.meta.version = args.version or model.meta.version
    info = json.loads((run / "training.json").read_text()) if (run / "training.json").is_file() else {}
    model.save(out, {"training": info}, half=True)
    if (run / "training.json").is_file():
        shutil.copy(run / "training.json", out / "training.json")
    print(f"packaged {run} -> {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from twin_engine.ops.demo import run_demo

    return run_demo(_settings(args), duration=args.duration, patients=args.patients)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.evaluation.classifier import load_classifier
    from models.evaluation.report import EvalConfig, evaluate
    from models.twin import TwinModel

    settings = _settings(args)
    model_dir = Path(args.model or settings.model_path)
    model = TwinModel.load(model_dir)
    cfg = EvalConfig.reduced_mode(seed=args.seed) if args.reduced else EvalConfig(seed=args.seed)
    cfg.steps = args.steps or settings.steps
    cfg.sampler = args.sampler or settings.sampler
    if args.steps_curve is not None:  # "" : no teacher points (a candidate student alone)
        cfg.steps_curve = tuple(int(x) for x in args.steps_curve.split(",") if x)
    if args.curve_seeds:
        cfg.curve_seeds = args.curve_seeds
    data = Path(args.data) if args.data else settings.data_dir / "ptbxl-subset"
    out = Path(args.out)
    judge = None
    if args.judge:
        judge = load_classifier(Path(args.judge))
    elif not args.reduced and (model_dir / "evaluator.safetensors").is_file():
        judge = load_classifier(model_dir)
    if args.curve_only:
        import json

        from models.evaluation.report import curve_only

        if judge is None:  # the shipped model's judge: candidates are scored like the default
            judge = load_classifier(settings.model_path)
        curve = curve_only(model, data, cfg, judge)
        out.mkdir(parents=True, exist_ok=True)
        (out / "curve.json").write_text(json.dumps(curve, indent=2))
        for name, d in curve.items():
            sd = f" ± {d['fid_sd']:.2f}" if d.get("fid_sd") is not None else ""
            ratio = (f"  ({d['ratio_to_50']:.2f} ± {d['ratio_to_50_sd'] or 0:.2f} x 50 steps)"
                     if d.get("ratio_to_50") else "")
            print(f"{name:>14}: FID {d['fid']:.2f}{sd}{ratio}")
        return 0
    evaluate(model, data, out, cfg, model_dir if args.save_judge else None, judge=judge)
    print(f"report: {out / 'EVALUATION.md'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.evaluation.plot import plot_ecg

    src = Path(args.source)
    if src.suffix == ".json":  # a segment as published on the segments topic
        from stream.segments import decode_segment

        seg = decode_segment(src.read_bytes())
        sig, fs, title, units = seg.samples, seg.fs, f"{seg.patient_id} seq {seg.seq}", seg.units
    else:
        import wfdb

        from models.data.ptbxl import read_wfdb_signal

        header = wfdb.rdheader(str(src))
        sig, fs, title, units = read_wfdb_signal(src), header.fs, src.name, (header.units or ["mV"])[0]
    print(plot_ecg(sig, fs, args.out, title, "z" if units == "zscore" else units))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from twin_engine.ops import bench

    settings = _settings(args)
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    if args.what == "generate":
        result = bench.bench_generate(settings, args.backends.split(","), args.samplers.split(","),
                                      ints(args.steps), ints(args.batches), args.repeats or 5)
        print()
        print(bench.table(result))
    elif args.what == "stress":
        result = bench.bench_stress(settings, args.repeats or 3)
    elif args.what == "ws":
        deflate = tuple(x == "on" for x in args.ws_deflate.split(","))
        result = bench.bench_ws(settings, int(args.patients.split(",")[0]), args.clients, args.duration, deflate)
    else:
        result = bench.bench_serve(settings, ints(args.patients), args.duration, args.speed,
                                   args.realtime_patients, args.realtime_duration, args.generator == "null")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from twin_engine.ops.app import run_app

    return run_app(_settings(args), duration=args.duration)


def cmd_monitor(args: argparse.Namespace) -> int:
    import asyncio

    from twin_engine.ops.app import run_monitor

    settings = _settings(args)
    if args.port is not None:
        settings.http_port = args.port
    asyncio.run(run_monitor(settings, args.duration))
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from twin_engine.ops.clients import with_default_broker
    from twin_engine.ops.scenario import load_scenario, play

    settings = with_default_broker(_settings(args))
    scenario = load_scenario(args.scenario)
    start = asyncio.run(play(settings, scenario, args.timeout))
    for pid, t in sorted(start.items()):
        print(f"{pid}: stream starts {time.strftime('%H:%M:%S', time.localtime(t))}")
    for c in scenario.changes:
        if c.event.type == "remove":
            print(f"{c.event.patient_id} at {c.at:g} s: removed ({c.event.event_id})")
            continue
        st = "+".join(c.event.state.statements) or "-"
        print(f"{c.event.patient_id} at {c.at:g} s: {st} {c.event.state.heart_rate:g} bpm"
              + (f" over {c.event.transition_seconds:g} s" if c.event.transition_seconds else "")
              + f" ({c.event.event_id})")
    print(f"scheduled {len(scenario.changes)} changes for {len(start)} patients; "
          f"when each began: the annotations topic ({settings.kafka.topic_annotations})")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.rhythm.render import BankError
    from models.twin import TwinModel
    from stream.events import EventError
    from twin_engine.ops.render import render_scenario
    from twin_engine.ops.scenario import load_scenario

    settings = _settings(args)
    model = TwinModel.load(Path(settings.model_path))
    scenario = load_scenario(args.scenario, model.meta.vocab)
    try:
        written = render_scenario(settings, model, scenario, Path(args.out), args.seconds, args.fs)
    except (EventError, BankError) as exc:
        raise ScenarioError(str(exc)) from None
    for r in written:
        print(f"{r.path}: {r.seconds:g} s, {r.beats} beats, episodes {', '.join(r.episodes)}")
    return 0


def cmd_stress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.stress.detectors import DetectorError, detector
    from models.twin import TwinModel
    from twin_engine.ops.stress import SHIPPED, run_suite

    settings = _settings(args)
    try:
        dets = [detector(d) for d in (args.detector or ["xqrs", "neurokit2", "pantompkins"])]
    except DetectorError as exc:
        print(f"detector error: {exc}", file=sys.stderr)
        return 2
    if args.recorded:
        from twin_engine.ops.stress import run_recorded

        if args.suite:
            print("give a suite or --recorded, not both", file=sys.stderr)
            return 2
        try:
            report = run_recorded(Path(args.recorded), dets, Path(args.out), args.lead, args.learning)
        except ValueError as exc:  # a RecordedError, or a lead the records lack (wfdb's ValueError)
            print(f"recorded run: {exc}", file=sys.stderr)
            return 2
    else:
        model = TwinModel.load(Path(settings.model_path))
        report = run_suite(settings, model, [Path(p) for p in (args.suite or [SHIPPED])], dets, Path(args.out),
                           args.lead, args.learning)
    for name, s in report["detectors"].items():
        b = s["beats"]["all"]
        print(f"{name}: QRS Se {100 * b['se']:.2f}% +P {100 * b['ppv']:.2f}% over {s['records']} cases"
              + (f", {len(s['errors'])} errors" if s["errors"] else ""))
    print(f"{report['cases']} cases in {report['seconds_taken']:g} s; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from twin_engine.ops.clients import send

    ev = send(_settings(args), args.patient, args.statement, args.hr, args.effective_time, args.transition,
              args.contrast)
    print(f"sent {ev.event_id} to {args.patient}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from twin_engine.ops.clients import register

    ev = register(_settings(args), args.patient, args.wfdb, args.statement, args.hr, args.start, args.seconds)
    print(f"sent {ev.event_id}: register {args.patient}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from twin_engine.ops.clients import tail

    try:
        asyncio.run(tail(_settings(args), args.patient, args.limit, args.from_beginning, args.dead_letters))
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twin-engine", description=__doc__)
    p.add_argument("--config", help="TOML configuration file (also TWIN_ENGINE_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("doctor", help="report Python, torch, GPU, broker, data and backend").set_defaults(
        func=cmd_doctor
    )

    b = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    b.add_argument("--port", type=int, default=9092)
    b.set_defaults(func=cmd_broker)

    t = sub.add_parser("train", help="train autoencoder | encoder | erase | diffusion | distill")
    t.add_argument("stage", choices=["autoencoder", "encoder", "erase", "diffusion", "distill"])
    t.add_argument("--out", default=None, help="run folder (checkpoints; resumes if present)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--size", choices=["tiny", "small"], default="small")
    t.add_argument("--data", default=None, help="PTB-XL-layout folder (default: shared subset)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ablation", choices=["adaln-only", "cross-only", "both"], default=None,
                   help="diffusion stage: a fresh denoiser with one AdaX pathway off (or both on)")
    t.add_argument("--student-steps", type=int, default=4, help="distill: the student's step count")
    t.add_argument("--teacher-steps", type=int, default=48, help="distill: the teacher's DPM-Solver++ steps")
    t.add_argument("--trajectories", type=int, default=6144, help="distill: teacher trajectories to fit")
    t.add_argument("--guidance", type=float, default=1.5, help="distill: guidance folded into the student")
    t.add_argument("--ema", type=float, default=0.999, help="distill: EMA decay of the student's weights (0: off)")
    t.add_argument("--on-policy", action="store_true",
                   help="distill: fit pairs on the student's own path (a further round; see models/training/distill.py)")
    t.add_argument("--student-guidance", type=float, default=None,
                   help="distill: fit the student's own steps run with this classifier-free guidance on top, "
                        "folding it in (a further round)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the stage's)")
    t.add_argument("--balance", type=float, default=0.0,
                   help="diffusion: draw records by their rarest statement's count to the power -BALANCE (0: uniform)")
    t.add_argument("--identity-weight", type=float, default=0.0,
                   help="diffusion and distill: add this weight times the extractor's cosine distance between "
                        "the predicted clean latent and the record's base vector (0: off)")
    t.set_defaults(func=cmd_train)

    pk = sub.add_parser("package", help="turn a training run into a shippable model folder (fp16)")
    pk.add_argument("run")
    pk.add_argument("--out", default="models/default")
    pk.add_argument("--version", default=None)
    pk.set_defaults(func=cmd_package)

    d = sub.add_parser("demo", help="embedded broker + service + demo scenario + dashboard")
    d.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until Ctrl-C")
    d.add_argument("--patients", type=int, default=8)
    d.set_defaults(func=cmd_demo)

    ev = sub.add_parser("evaluate", help="quality report of a model against real ECG and neurokit2")
    ev.add_argument("--data", default=None, help="PTB-XL-layout folder (default: shared subset)")
    ev.add_argument("--model", default=None, help="model folder (default: configured model_path)")
    ev.add_argument("--out", default="artifacts/evaluation")
    ev.add_argument("--reduced", action="store_true", help="CI-sized run")
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--sampler", default=None, help="auto (default) | distilled | dpmpp2m | ddim | ddpm")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--save-judge", action="store_true", help="store the trained classifier beside the model")
    ev.add_argument("--judge", default=None, help="folder holding evaluator.safetensors to score with")
    ev.add_argument("--steps-curve", default=None, help="step counts for the quality curve, e.g. 1,4,50")
    ev.add_argument("--curve-seeds", type=int, default=None, help="generation seeds per curve point")
    ev.add_argument("--curve-only", action="store_true",
                    help="only the quality-vs-steps FIDs (judge: --judge, the model's, or the default model's)")
    ev.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("plot", help="draw a WFDB record or a segment JSON on ECG paper")
    pl.add_argument("source")
    pl.add_argument("--out", default="ecg.png")
    pl.set_defaults(func=cmd_plot)

    bn = sub.add_parser("bench", help="benchmarks: generation and the whole service (figures, not tests)")
    bn.add_argument("what", choices=["generate", "serve", "ws", "stress"])
    bn.add_argument("--clients", type=int, default=50, help="ws: concurrent WebSocket subscribers")
    bn.add_argument("--ws-deflate", default="off", choices=["off", "on", "off,on", "on,off", "off,on,off,on"],
                    help="ws: runs with the hub declining or accepting the clients' permessage-deflate, in this order")
    bn.add_argument("--backends", default="torch,torch-compile,cuda-graphs,onnxruntime,tensorrt")
    bn.add_argument("--samplers", default="distilled,dpmpp2m,ddim")
    bn.add_argument("--steps", default="1,2,4")
    bn.add_argument("--batches", default="1,16,64")
    bn.add_argument("--repeats", type=int, default=None, help="generate: 5 by default; stress: 3")
    bn.add_argument("--patients", default="10,100,1000", help="serve: patient counts (accelerated)")
    bn.add_argument("--duration", type=float, default=30.0, help="serve: seconds measured per count")
    bn.add_argument("--speed", type=float, default=0.0, help="serve: accelerated speed (0 = as fast as possible)")
    bn.add_argument("--realtime-patients", type=int, default=100, help="serve: real-time run (0 skips)")
    bn.add_argument("--realtime-duration", type=float, default=600.0)
    bn.add_argument("--generator", choices=["model", "null"], default="model",
                    help="serve: null = instant flat segments, to measure the service without the model")
    bn.add_argument("--json", default=None, help="also write the figures as JSON here")
    bn.set_defaults(func=cmd_bench)

    sv = sub.add_parser("serve", help="run the twin service (embedded broker if none configured)")
    sv.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until SIGTERM")
    sv.set_defaults(func=cmd_serve)

    mo = sub.add_parser("monitor", help="page, API and metrics for every patient of a deployment, read from its topics")
    mo.add_argument("--port", type=int, default=None, help="HTTP port (default: http_port)")
    mo.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until SIGTERM")
    mo.set_defaults(func=cmd_monitor)

    pl2 = sub.add_parser("play", help="onboard a scenario's patients and schedule its timeline of changes")
    pl2.add_argument("scenario", help="TOML file (example: twin_engine/ops/scenarios/ward.toml)")
    pl2.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the first segments")
    pl2.set_defaults(func=cmd_play)

    rn = sub.add_parser("render", help="a scenario's patients as WFDB records with beat and rhythm annotations "
                                       "(offline, no broker)")
    rn.add_argument("scenario", help="scenario TOML (see twin_engine/ops/scenarios/)")
    rn.add_argument("--out", required=True, help="folder for the records, annotations and manifest.json")
    rn.add_argument("--seconds", type=float, help="record length (default: 30 s past the last change)")
    rn.add_argument("--fs", type=int, help="output rate in Hz (default: the scenario's fs, else the model's 250); "
                                           "above 250 each pacing stimulus is drawn as its pulse (pulse_mv, pulse_ms "
                                           "of the paced rhythm) and listed in a .pace annotation file")
    rn.set_defaults(func=cmd_render)
    st = sub.add_parser("stress", help="run a stress suite of scenarios (offline), score detectors against the "
                                       "ground truth, write a report")
    st.add_argument("suite", nargs="*", help="scenario files or folders of them (default: the shipped suite, "
                                             "twin_engine/ops/suites/standard)")
    st.add_argument("--detector", action="append", help="xqrs, neurokit2, pantompkins, py:module:function, "
                                                        "'cmd:<command with {record}>', or a beat classifier "
                                                        "'classify:<command with {record}>' (repeat; default: the "
                                                        "three built in)")
    st.add_argument("--out", default="stress-report", help="folder for the records and the report")
    st.add_argument("--lead", default="II", help="the lead the detectors read")
    st.add_argument("--learning", type=float, default=5.0, help="seconds of each record left unscored (learning)")
    st.add_argument("--recorded", metavar="DIR", help="score the WFDB records a run wrote (a service's WFDB export) "
                                                      "against their own annotation files, instead of a suite")
    st.set_defaults(func=cmd_stress)
    se = sub.add_parser("send", help="send a condition event")
    se.add_argument("patient")
    se.add_argument("statement", nargs="*", help="SCP codes, optionally CODE=intensity (e.g. AFIB PVC=0.5)")
    se.add_argument("--hr", type=float, default=70.0, help="target heart rate, bpm")
    se.add_argument("--effective-time", type=float, default=None, help="stream time (epoch s)")
    se.add_argument("--transition", type=float, default=0.0, help="seconds to ramp the heart rate")
    se.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=None,
                    help="draw the state with (or without) the model's contrastive guidance, whatever the "
                         "service's contrast_guidance (docs/EVALUATION.md: stronger morphology, less identity)")
    se.set_defaults(func=cmd_send)

    rg = sub.add_parser("register", help="onboard a patient from WFDB reference records")
    rg.add_argument("patient")
    rg.add_argument("--wfdb", action="append", required=True,
                    help="record path, read by the service from its data_dir: relative to it, or a "
                         "local path that lies in it (repeatable)")
    rg.add_argument("statement", nargs="*")
    rg.add_argument("--hr", type=float, default=70.0)
    rg.add_argument("--start", type=float, default=None, help="read each record from this second")
    rg.add_argument("--seconds", type=float, default=None,
                    help="read this many seconds of each record (a stretch of a long one)")
    rg.set_defaults(func=cmd_register)

    tl = sub.add_parser("tail", help="follow segments (or dead-lettered events) on the console")
    tl.add_argument("patient", nargs="?")
    tl.add_argument("--limit", type=int, default=0)
    tl.add_argument("--from-beginning", action="store_true")
    tl.add_argument("--dead-letters", action="store_true", help="the events refused, with the reason and their bytes")
    tl.set_defaults(func=cmd_tail)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "statement", None), list) and not any(x.startswith("-") for x in extra):
        # codes after an option (`register bed-1 --wfdb REC SR`): argparse ends the positionals
        # at the first option, so the codes the README shows there arrive here
        args.statement += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ConditionError as exc:  # a state given on the command line (send, register)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ScenarioError as exc:  # a scenario file that cannot be played (play)
        print(f"scenario error: {exc}", file=sys.stderr)
        return 2
    except FATAL_ERRORS as exc:  # the broker unreachable at start, a worker that cannot go on
        print(f"twin-engine: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
