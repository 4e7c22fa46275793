"""The ``twin-engine`` command line. Each subcommand imports what it needs lazily, so that
``doctor`` works even where torch or the broker is broken."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from twin_engine.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_doctor(args: argparse.Namespace) -> int:
    from twin_engine.doctor import print_report

    print_report(_settings(args))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from twin_engine.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as broker:
        print(f"Kafka-protocol broker (Tansu) listening on {broker.bootstrap_servers}; Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.train import main as train_main

    return train_main(args, _settings(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from twin_engine.demo import run_demo

    return run_demo(_settings(args), duration=args.duration, patients=args.patients)


def cmd_serve(args: argparse.Namespace) -> int:
    from twin_engine.app import run_app

    return run_app(_settings(args), duration=args.duration)


def cmd_send(args: argparse.Namespace) -> int:
    from twin_engine.clients import send

    ev = send(_settings(args), args.patient, args.statement, args.hr, args.effective_time, args.transition)
    print(f"sent {ev.event_id} to {args.patient}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from twin_engine.clients import register

    ev = register(_settings(args), args.patient, args.wfdb, args.statement, args.hr)
    print(f"sent {ev.event_id}: register {args.patient}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from twin_engine.clients import tail

    try:
        asyncio.run(tail(_settings(args), args.patient, args.limit, args.from_beginning))
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

    t = sub.add_parser("train", help="train autoencoder | encoder | diffusion")
    t.add_argument("stage", choices=["autoencoder", "encoder", "diffusion"])
    t.add_argument("--out", default=None, help="run folder (checkpoints; resumes if present)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--size", choices=["tiny", "small"], default="small")
    t.add_argument("--data", default=None, help="PTB-XL-layout folder (default: shared subset)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="embedded broker + service + demo scenario + dashboard")
    d.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until Ctrl-C")
    d.add_argument("--patients", type=int, default=8)
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="run the twin service (embedded broker if none configured)")
    sv.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until SIGTERM")
    sv.set_defaults(func=cmd_serve)

    se = sub.add_parser("send", help="send a condition event")
    se.add_argument("patient")
    se.add_argument("statement", nargs="*", help="SCP codes, optionally CODE=intensity (e.g. AFIB PVC=0.5)")
    se.add_argument("--hr", type=float, default=70.0, help="target heart rate, bpm")
    se.add_argument("--effective-time", type=float, default=None, help="stream time (epoch s)")
    se.add_argument("--transition", type=float, default=0.0, help="seconds to ramp the heart rate")
    se.set_defaults(func=cmd_send)

    rg = sub.add_parser("register", help="onboard a patient from WFDB reference records")
    rg.add_argument("patient")
    rg.add_argument("--wfdb", action="append", required=True, help="record path (repeatable)")
    rg.add_argument("statement", nargs="*")
    rg.add_argument("--hr", type=float, default=70.0)
    rg.set_defaults(func=cmd_register)

    tl = sub.add_parser("tail", help="follow segments on the console")
    tl.add_argument("patient", nargs="?")
    tl.add_argument("--limit", type=int, default=0)
    tl.add_argument("--from-beginning", action="store_true")
    tl.set_defaults(func=cmd_tail)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
