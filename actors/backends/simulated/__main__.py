"""The simulated Ollama server as a process of its own, which can be killed and restarted:

    python -m actors.backends.simulated [--host 127.0.0.1] [--port N] [--profile NAME[=JSON]]...
        [--speed X] [--max-loaded-models N] [--default-keep-alive SECONDS]

It prints its base URL on stdout once it listens, then serves until SIGTERM or SIGINT
(exit status 0). Killed (even with SIGKILL) and started again on the same port, it starts
with nothing loaded, as a restarted Ollama does; the listening socket sets SO_REUSEADDR,
so the new process binds at once. It is the same SimulatedOllama that
``actors.backend_factory`` starts inside gpulane for ``kind = "simulated"``.

``--profile NAME`` adds one of ``DEFAULT_MODELS`` by its name (another name gets
ModelProfile's defaults); ``NAME=JSON`` sets ModelProfile fields over that, e.g.
``--profile 'tiny={"load_seconds": 0.01, "tokens_per_second": 5000}'``. Without any
``--profile`` the server has ``DEFAULT_MODELS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from actors.backends.simulated._catalog import DEFAULT_MODELS, ModelProfile, canonical
from actors.backends.simulated._simulator import SimulatedOllama

__all__ = ["main", "parse_profile"]

_FIELDS = {field.name: type(field.default) for field in dataclasses.fields(ModelProfile)}
_KINDS = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def parse_profile(text: str) -> tuple[str, ModelProfile]:
    """``NAME`` or ``NAME=JSON`` (see the module docstring) as a model name and its profile;
    ValueError naming the model and the field at fault."""
    name, _, fields = text.partition("=")
    name = name.strip()
    if not name:
        raise ValueError(f"{text!r}: a model name is needed before '='")
    base = DEFAULT_MODELS.get(name) or DEFAULT_MODELS.get(canonical(name)) or ModelProfile()
    if not fields:
        return name, base
    try:
        given = json.loads(fields)
    except ValueError as exc:
        raise ValueError(f"{name}: the profile is not JSON ({exc})") from None
    if not isinstance(given, dict):
        raise ValueError(f"{name}: the profile must be a JSON object of ModelProfile fields")
    for field, value in given.items():
        kind = _FIELDS.get(field)
        if kind is None:
            raise ValueError(f"{name}: unknown field {field!r} (allowed: {', '.join(_FIELDS)})")
        if not _is_a(value, kind):
            raise ValueError(f"{name}.{field}: must be {_KINDS[kind]}, not {value!r}")
    try:
        return name, dataclasses.replace(base, **given)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _is_a(value: object, kind: type) -> bool:
    """True if the JSON ``value`` can be a field of type ``kind`` (an int is a float too)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m actors.backends.simulated",
        description="Run the simulated Ollama server until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free one)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME[=JSON]",
        help="a model the server has, with ModelProfile fields as a JSON object (repeatable; "
        "default: the built-in models)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="divides every delay")
    parser.add_argument("--max-loaded-models", type=int, default=1, metavar="N")
    parser.add_argument(
        "--default-keep-alive",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="OLLAMA_KEEP_ALIVE in seconds (negative: forever; default 300)",
    )
    return parser


def _server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SimulatedOllama:
    """The server the arguments describe; a bad argument ends the process (status 2)."""
    models = None
    try:
        if args.profile:
            models = dict(parse_profile(text) for text in args.profile)
        keep_alive = None if args.default_keep_alive < 0 else args.default_keep_alive
        return SimulatedOllama(
            models,
            host=args.host,
            port=args.port,
            speed=args.speed,
            max_loaded_models=args.max_loaded_models,
            default_keep_alive=keep_alive,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGTERM or SIGINT, and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    server = _server(args, parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def stop_serving(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_serving)
    try:
        url = server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(url, flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
