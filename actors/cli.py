"""The ``gpulane`` command line: ``demo``, ``serve`` and ``queue ...`` against a running gateway.

    gpulane serve --config gpulane.toml          # the gateway (Ollama API on 127.0.0.1:11435)
    gpulane queue ls                              # your jobs, newest first
    gpulane queue show 42                         # one job, by sequence number or id
    gpulane queue cancel 42 | retry 42            # steer your jobs
    gpulane queue stats                           # depth per lane and priority, the GPU slots
    gpulane queue pause | resume                  # admin keys only

``queue`` commands find the gateway with ``--url`` (or ``GPULANE_URL``) and authenticate
with ``--key`` (or ``GPULANE_API_KEY``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:11435"


def _serve(args: argparse.Namespace) -> int:
    from actors.config import Config
    from actors.gateway import serve
    from actors.logs import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per catalog request
    config = Config.load(args.config) if args.config else Config.from_mapping({})
    serve(config, config_path=args.config, host=args.host, port=args.port)
    return 0


def _request(args: argparse.Namespace, method: str, path: str) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise SystemExit(f"gpulane: cannot reach the gateway at {args.url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else body
        raise SystemExit(f"gpulane: {response.status_code}: {error}")
    return body


def _job_line(job: dict[str, Any]) -> str:
    spec = job["spec"]
    return (
        f"{job['seq']:>6}  {job['id']}  {job['state']:<9}  {spec['lane']:<8}  "
        f"{spec['priority']:<6}  {spec['caller']:<12}  {spec['model']}"
    )


def _queue(args: argparse.Namespace) -> int:
    action = args.action
    if action == "ls":
        query = f"?limit={args.limit}" + "".join(f"&state={s}" for s in args.state or ())
        jobs = _request(args, "GET", "/jobs" + query)["jobs"]
        print(
            f"{'seq':>6}  {'id':<26}  {'state':<9}  {'lane':<8}  {'prio':<6}  {'caller':<12}  model"
        )
        for job in jobs:
            print(_job_line(job))
        return 0
    if action in ("show", "cancel", "retry"):
        if not args.job:
            raise SystemExit(f"gpulane: queue {action} needs a job id or sequence number")
        if action == "show":
            body = _request(args, "GET", f"/jobs/{args.job}")
        else:
            body = _request(args, "POST", f"/jobs/{args.job}/{action}")
    elif action == "stats":
        body = _request(args, "GET", "/queue")
    else:
        body = _request(args, "POST", f"/admin/{action}")
    print(json.dumps(body, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpulane",
        description="A durable, preemptive GPU arbiter for local LLMs.",
        epilog="Run `gpulane COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "demo", help="run the demo on a simulated GPU (what `make run` does)", add_help=False
    )
    serve = sub.add_parser(
        "serve",
        help="serve the Ollama API, an OpenAI-compatible API and the job surface",
        description="Start gpulane and its HTTP gateway. Point any Ollama client at it "
        "(OLLAMA_HOST=http://127.0.0.1:11435). Stop with Ctrl-C.",
    )
    serve.add_argument("--config", metavar="FILE", help="a gpulane.toml (default: built-ins)")
    serve.add_argument("--host", help="listen address (default: gateway.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: gateway.port, 11435)")
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error")
    serve.add_argument("--log-json", action="store_true", help="log JSON lines")
    queue = sub.add_parser(
        "queue",
        help="look at and steer the queue of a running gateway",
        description="Talk to a running gateway. ls: your jobs; show/cancel/retry JOB: one "
        "job by id or sequence number; stats: the queue and the GPU slots; pause/resume: "
        "stop or restart dispatch (admin keys only).",
    )
    queue.add_argument(
        "action", choices=("ls", "show", "cancel", "retry", "stats", "pause", "resume")
    )
    queue.add_argument("job", nargs="?", help="a job id or sequence number")
    queue.add_argument(
        "--url", default=os.environ.get("GPULANE_URL", DEFAULT_URL),
        help=f"the gateway (default: $GPULANE_URL or {DEFAULT_URL})",
    )  # fmt: skip
    queue.add_argument(
        "--key", default=os.environ.get("GPULANE_API_KEY"),
        help="an API key from the gateway config (default: $GPULANE_API_KEY)",
    )  # fmt: skip
    queue.add_argument("--state", action="append", help="ls: only jobs in this state (repeatable)")
    queue.add_argument("--limit", type=int, default=50, help="ls: at most this many (default 50)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``gpulane`` sub-command."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from actors.demo import main as demo_main

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve":
        return _serve(args)
    return _queue(args)


if __name__ == "__main__":
    sys.exit(main())
