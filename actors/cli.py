"""The ``gpulane`` command line: ``demo``, ``serve``, ``reload``, ``top`` and ``queue ...``.

    gpulane serve --config gpulane.toml          # the gateway (Ollama API on 127.0.0.1:11435)
    gpulane reload                                # re-read its config file (admin keys only)
    gpulane top                                   # a live view of a running gateway
    gpulane queue ls                              # your jobs, newest first, and where each ran
    gpulane queue show 42                         # one job (its backend and slot too), by seq or id
    gpulane queue cancel 42 | retry 42            # steer your jobs
    gpulane queue clear                           # cancel your queued jobs (admins: everyone's)
    gpulane queue stats                           # depth per lane and priority, the GPU slots
    gpulane queue pause | resume                  # admin keys only
    gpulane queue prune [--older-than SECONDS]    # delete old ended jobs now (admin keys only)

``reload``, ``top`` and ``queue`` find the gateway with ``--url`` (or ``GPULANE_URL``)
and authenticate with ``--key`` (or ``GPULANE_API_KEY``). ``serve`` exits with status 0
when stopped (SIGTERM, SIGINT) and 1 when its supervision tree gave up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:11435"


def _serve(args: argparse.Namespace) -> int:
    from actors.config import Config
    from actors.gateway import serve
    from actors.logs import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per catalog request
    config = Config.load(args.config) if args.config else Config.from_mapping({})
    return serve(config, config_path=args.config, host=args.host, port=args.port)


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


_JOB_HEADER = (
    f"{'seq':>6}  {'id':<26}  {'state':<9}  {'lane':<8}  {'prio':<6}  {'caller':<12}  "
    f"{'backend':<10}  {'slot':<14}  model"
)


def _job_line(job: dict[str, Any]) -> str:
    """One job of ``queue ls``; its backend and slot say where its last call ran (``-``
    for a job that has not run)."""
    spec = job["spec"]
    return (
        f"{job['seq']:>6}  {job['id']}  {job['state']:<9}  {spec['lane']:<8}  "
        f"{spec['priority']:<6}  {spec['caller']:<12}  {job['backend'] or '-':<10}  "
        f"{job['slot'] or '-':<14}  {spec['model']}"
    )


def _queue(args: argparse.Namespace) -> int:
    action = args.action
    if action == "ls":
        query = f"?limit={args.limit}" + "".join(f"&state={s}" for s in args.state or ())
        jobs = _request(args, "GET", "/jobs" + query)["jobs"]
        print(_JOB_HEADER)
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
    elif action == "clear":
        query = f"?of={quote(args.of)}" if args.of else ""
        body = _request(args, "POST", "/queue/clear" + query)
    elif action == "prune":
        query = "" if args.older_than is None else f"?older_than_s={args.older_than}"
        body = _request(args, "POST", "/admin/prune" + query)
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
    reload = sub.add_parser(
        "reload",
        help="make a running gateway re-read its config file (admin keys only)",
        description="Ask a running `gpulane serve` to re-read its config file, as SIGHUP "
        "and POST /admin/reload do. Prints the keys that changed. A change that cannot "
        "apply while running (the store, the backend, the cloud slots, the listen "
        "address) is refused naming each key, and nothing changes.",
    )
    _gateway_options(reload)
    top = sub.add_parser(
        "top",
        help="a live view of a running gateway: GPU, models, queue, callers, swaps, preemptions",
        description="Redraw the state of a running gateway every second: each backend (its "
        "state, resident models, busy slots and swaps), each GPU slot and the job it runs, "
        "the resident models, the queue by lane and priority, the jobs each caller has "
        "waiting or running, and recent swaps and preemptions. An admin "
        "key sees every caller; other keys see their own jobs and the totals. Ctrl-C quits.",
    )
    _gateway_options(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    queue = sub.add_parser(
        "queue",
        help="look at and steer the queue of a running gateway",
        description="Talk to a running gateway. ls: your jobs and the backend and slot each "
        "last ran on; show/cancel/retry JOB: one job by id or sequence number; clear: cancel "
        "all your queued jobs (an admin key clears everyone's, or one caller's with --of); "
        "stats: the queue and the GPU slots; "
        "pause/resume: stop or restart dispatch; prune: delete the jobs that ended more "
        "than --older-than seconds ago (default store.prune_after_s) now (admin keys only).",
    )
    queue.add_argument(
        "action",
        choices=("ls", "show", "cancel", "retry", "clear", "stats", "pause", "resume", "prune"),
    )
    queue.add_argument("job", nargs="?", help="a job id or sequence number")
    _gateway_options(queue)
    queue.add_argument("--state", action="append", help="ls: only jobs in this state (repeatable)")
    queue.add_argument("--limit", type=int, default=50, help="ls: at most this many (default 50)")
    queue.add_argument("--of", metavar="CALLER", help="clear, admin keys: only this caller's jobs")
    queue.add_argument(
        "--older-than", type=float, metavar="SECONDS",
        help="prune: jobs that ended more than this long ago (default: store.prune_after_s)",
    )  # fmt: skip
    return parser


def _gateway_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--key``, shared by the commands that talk to a running gateway."""
    parser.add_argument(
        "--url", default=os.environ.get("GPULANE_URL", DEFAULT_URL),
        help=f"the gateway (default: $GPULANE_URL or {DEFAULT_URL})",
    )  # fmt: skip
    parser.add_argument(
        "--key", default=os.environ.get("GPULANE_API_KEY"),
        help="an API key from the gateway config (default: $GPULANE_API_KEY)",
    )  # fmt: skip


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
    if args.command == "reload":
        print(json.dumps(_request(args, "POST", "/admin/reload"), indent=2))
        return 0
    if args.command == "top":
        from actors.top import run_top

        if args.interval <= 0:
            parser.error("--interval must be more than 0 seconds")
        return run_top(args.url, args.key, interval=args.interval, once=args.once)
    return _queue(args)


if __name__ == "__main__":
    sys.exit(main())
