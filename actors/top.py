"""``gpulane top``: a live terminal view of a running gateway.

It polls the gateway's ``GET /status`` (the picture the status page at ``/`` shows)
and redraws with rich: the alerts firing (a red line each), each backend's health, a row
per backend (its state, resident models, busy and total slots, swaps), the GPU slots and
the job each runs, resident models and the swap figures, the queue by lane and priority,
unfinished jobs per caller, and recent swaps and preemptions. On PostgreSQL a line under
the header says which gateway leads and how old its lease is (``describe_cluster``); a
follower that cannot read the leader's picture (no leader, or the leader unreachable) shows
that line alone. ``render`` draws one picture, so ``make run`` shows the same view.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = [
    "GatewayUnreachable",
    "describe_alert",
    "describe_cluster",
    "describe_event",
    "describe_health",
    "fetch_status",
    "render",
    "run_top",
]


class GatewayUnreachable(Exception):
    """``/status`` could not be read: the gateway is down, or the key was refused."""


def fetch_status(client: httpx.Client) -> dict[str, Any]:
    """One picture from ``GET /status`` on ``client``'s gateway."""
    try:
        response = client.get("/status")
    except httpx.HTTPError as exc:
        raise GatewayUnreachable(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    if response.status_code != 200:
        try:
            problem = response.json().get("error", response.text)
        except ValueError:
            problem = response.text
        raise GatewayUnreachable(f"{response.status_code}: {problem}")
    picture: dict[str, Any] = response.json()
    return picture


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 90:
        return f"{value:.1f}s"
    return f"{int(value // 60)}m{int(value % 60):02d}s"


def _who(job: Mapping[str, Any] | None) -> str:
    return "" if job is None else f"#{job['seq']} {job['caller']}"


def describe_event(event: Mapping[str, Any]) -> str:
    """One line for a swap or a preemption, naming jobs only where the viewer may see them."""
    if event["kind"] == "swap":
        if event["slot"] is None:
            return f"{event['count']} more swap(s) between two looks: {', '.join(event['models'])}"
        job = event["job"]
        return f"swap {event['slot']}: {event['from'] or 'nothing'} → {event['to']}" + (
            f" for {_who(job)}" if job else ""
        )
    victim, by = event["job"], event["by"]
    text = f"preemption {event['slot']}: "
    text += f"{_who(victim)} ({victim['lane']})" if victim else f"an external {event['model']} call"
    text += " made way"
    if by:
        text += f" for {_who(by)} ({by['lane']}/{by['priority']})"
    return text


def describe_health(name: str, backend: Mapping[str, Any], at: float) -> str:
    """One line for a backend at ``at``: up, or down since when, the next probe and the last
    error (None for a viewer without a key: it may name the backend's address)."""
    if backend["state"] == "up":
        down = backend["down_s_total"]
        return f"backend {name} up" + (f" (down {_seconds(down)} since start)" if down else "")
    text = f"backend {name} DOWN"
    if backend["since"] is not None:
        since = backend["since"]
        text += (
            f" since {time.strftime('%H:%M:%S', time.localtime(since))} ({_seconds(at - since)})"
        )
    if backend["next_probe_at"] is not None:
        text += f" · next probe in {_seconds(max(0.0, backend['next_probe_at'] - at))}"
    text += f" · {backend['probes']} probe(s) so far"
    if backend["last_error"]:
        text += f" · last error: {backend['last_error']}"
    return text


def describe_alert(alert: Mapping[str, Any]) -> str:
    """One line for a firing alert: its rule, its subject, how long it has fired and the text
    of its latest notice (the subject and text are None where the viewer may not see them)."""
    text = f"ALERT {alert['rule']}"
    if alert["subject"] is not None:
        text += f" on {alert['subject']}"
    text += f" firing for {_seconds(alert['firing_s'])}"
    if alert["summary"] is None:
        return text + " (details need another key)"
    return text + f": {alert['summary']}"


def describe_cluster(cluster: Mapping[str, Any]) -> str:
    """One line for this gateway's place among several on PostgreSQL (``/status``'s
    ``cluster``): who leads (this gateway, or the leader a follower forwards to, its URL
    where the viewer may see it), the lease's age, its last renewal, the fencing token and
    the leases this gateway took; while nobody leads, that a failover is under way."""
    if cluster["leader"] is None:
        return f"cluster  {cluster['node']} {cluster['role']} · no leader: failover under way"
    if cluster["role"] == "leader":
        text = f"cluster  leader {cluster['leader']} (this gateway)"
    else:
        url = cluster["leader_url"]
        text = f"cluster  {cluster['node']} follower of {cluster['leader']}" + (
            f" ({url})" if url else ""
        )
    text += f" · lease {_seconds(cluster['lease_age_s'])}"
    text += f" · renewed {_seconds(cluster['renewed_age_s'])} ago · token {cluster['token']}"
    if cluster["takeovers"]:
        text += f" · takeovers {cluster['takeovers']}"
    return text


def _cluster(picture: Mapping[str, Any]) -> list[Text]:
    """The cluster line (none on SQLite): dim while a leader holds the lease, bold red
    during a failover."""
    if "cluster" not in picture:
        return []
    cluster = picture["cluster"]
    style = "bold red" if cluster["leader"] is None else "dim"
    return [Text(describe_cluster(cluster), style=style)]


def _overhead(picture: Mapping[str, Any]) -> str:
    """``, 12.5% loading``: the share of busy time spent loading models (none before a
    slot has run a call)."""
    ratio = picture["overhead_ratio"]
    return "" if ratio is None else f", {ratio:.1%} loading"


def _health(picture: Mapping[str, Any]) -> Text:
    """Each backend's health on one line: dim while up, bold red while down."""
    line = Text()
    for name, backend in picture["health"].items():
        if line:
            line.append("   ")
        style = "dim" if backend["state"] == "up" else "bold red"
        line.append(describe_health(name, backend, picture["at"]), style=style)
    return line


def _header(picture: Mapping[str, Any], source: str) -> Text:
    jobs, counters = picture["jobs"], picture["counters"]
    viewer = picture["viewer"]
    header = Text.assemble(("gpulane", "bold"), "  ", (source, "dim"), "  ")
    if picture["paused"]:
        header.append(" PAUSED ", style="bold white on red")
    else:
        header.append(" dispatching ", style="bold white on green")
    header.append(
        f"  queued {picture['queued']} · running {jobs['loading'] + jobs['running']}"
        f" · succeeded {jobs['succeeded']} · failed {jobs['failed']}"
        f" · swaps {counters['swaps']} ({picture['swaps_per_hour']:.1f}/h{_overhead(picture)})"
        f" · preemptions {counters['preemptions']}"
    )
    who = "aggregates only" if viewer["caller"] is None else f"as {viewer['caller']}"
    header.append(f"   {who}{' (admin)' if viewer['admin'] else ''}", style="dim")
    return header


def _backends(picture: Mapping[str, Any]) -> Table:
    """A row per backend: its name (and labels), state, resident models, busy/total slots
    and swaps; a backend that is down in bold red."""
    table = Table(title="Backends", expand=True, title_justify="left")
    for column in ("backend", "state", "resident", "slots busy", "swaps"):
        table.add_column(column, justify="right" if column in ("slots busy", "swaps") else "left")
    for backend in picture["backends"]:
        labels = f" [{', '.join(backend['labels'])}]" if backend["labels"] else ""
        up = backend["state"] == "up"
        table.add_row(
            Text.assemble(backend["name"], (labels, "dim")),  # Text: no markup in the labels
            Text(backend["state"], style="green" if up else "bold red"),
            ", ".join(backend["resident"]) or "-",
            f"{backend['busy']}/{backend['slots']}",
            f"{backend['swaps']} ({backend['swaps_per_hour']:.1f}/h)",
        )
    return table


def _gpu(picture: Mapping[str, Any]) -> Table:
    table = Table(title="GPU", expand=True, title_justify="left")
    for column in ("slot", "state", "model", "job", "lane/prio", "for", "next"):
        table.add_column(column)
    for slot in picture["slots"]:
        job = slot["job"]
        if slot["cancelling"]:
            state = Text(f"stopping ({slot['cancelling']})", style="bold red")
        else:
            state = Text("busy", style="bold yellow") if slot["busy"] else Text("idle", "green")
        table.add_row(
            slot["id"],
            state,
            slot["model"] or "-",
            _who(job) if job else ("(not yours)" if slot["busy"] else ""),
            f"{job['lane']}/{job['priority']}" if job else "",
            _seconds(slot["running_s"]),
            _who(slot["next"]) or ("(not yours)" if slot["has_next"] else ""),
        )
    resident = ", ".join(picture["resident_models"]) or "none"
    table.caption = (
        f"resident models: {resident} · {picture['loading_s']:.1f}s of"
        f" {picture['busy_s']:.1f}s busy spent loading models"
    )
    table.caption_justify = "left"
    return table


def _queue(picture: Mapping[str, Any]) -> Table:
    depth: Mapping[str, Mapping[str, int]] = picture["depth"]
    priorities = list(next(iter(depth.values())))
    table = Table(title="Queue by lane and priority", expand=True, title_justify="left")
    table.add_column("lane")
    for priority in (*priorities, "total"):
        table.add_column(priority, justify="right")
    for lane, counts in depth.items():
        cells = [str(counts[p]) for p in priorities] + [str(sum(counts.values()))]
        table.add_row(lane, *(Text(c, style="bold" if c != "0" else "dim") for c in cells))
    return table


def _callers(picture: Mapping[str, Any]) -> Table:
    table = Table(title="Callers", expand=True, title_justify="left")
    table.add_column("caller")
    table.add_column("waiting or running", justify="right")
    table.add_column("on the GPU", justify="right")
    for caller in picture["callers"]:
        table.add_row(caller["caller"], str(caller["unfinished"]), str(caller["running"] or ""))
    if not picture["callers"]:
        hint = "(use an admin key)" if picture["viewer"]["caller"] is None else "(none)"
        table.add_row(Text(hint, style="dim"), "", "")
    return table


def _events(picture: Mapping[str, Any]) -> Table:
    table = Table(title="Recent swaps and preemptions", expand=True, title_justify="left")
    table.add_column("ago", justify="right", style="dim")
    table.add_column("event")
    for event in picture["events"][:8]:
        style = "red" if event["kind"] == "preemption" else "blue"
        table.add_row(_seconds(picture["at"] - event["at"]), Text(describe_event(event), style))
    if not picture["events"]:
        table.add_row("", Text("none seen yet", style="dim"))
    return table


WIDE = 120  # columns from which the view uses two columns of tables


class _Panes:
    """The five tables: side by side in a wide terminal, one above the other otherwise."""

    def __init__(self, picture: Mapping[str, Any]) -> None:
        self.left = (_backends(picture), _gpu(picture), _queue(picture))
        self.right = (_callers(picture), _events(picture))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if options.max_width < WIDE:
            yield Group(*self.left, *self.right)
            return
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(Group(*self.left), Group(*self.right))
        yield grid


def _without_leader(cluster: Mapping[str, Any], source: str) -> list[RenderableType]:
    """The frame of a follower that could not read the leader's picture: its cluster line
    and why there is nothing else."""
    header = Text.assemble(("gpulane", "bold"), "  ", (source, "dim"), "  ")
    if cluster["leader"] is None:
        header.append(" NO LEADER ", style="bold white on red")
        why = "nothing is dispatched until a gateway takes the lease"
    else:
        header.append(" LEADER UNREACHABLE ", style="bold white on red")
        why = f"this gateway cannot reach the leader {cluster['leader']} for its status"
    return [header, *_cluster({"cluster": cluster}), Text(why, style="bold red")]


def render(picture: Mapping[str, Any], *, source: str = "", footer: str = "") -> RenderableType:
    """One frame of the view for one ``/status`` picture (a follower's without the leader's
    part when ``leader_reachable`` is false)."""
    parts = (
        _without_leader(picture["cluster"], source)
        if picture.get("leader_reachable") is False
        else _lane(picture, source)
    )
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def _lane(picture: Mapping[str, Any], source: str) -> list[RenderableType]:
    """The frame's parts for a picture of a lane: header, cluster line, alerts, health,
    tables and totals."""
    counters = picture["counters"]
    totals = Text(
        f"submitted {counters['submitted']} · dispatched {counters['dispatched']}"
        f" ({counters['dispatched_cold']} for a model not loaded) · "
        f"retries asked {counters['retries_requested']} · cancels {counters['cancel_requests']}"
        + (f" · refused {sum(picture['rejections'].values())}" if picture["rejections"] else ""),
        style="dim",
    )
    return [
        _header(picture, source),
        *_cluster(picture),
        *(Text(describe_alert(alert), style="bold red") for alert in picture["alerts"]),
        _health(picture),
        _Panes(picture),
        totals,
    ]


def run_top(
    url: str,
    key: str | None,
    *,
    interval: float = 1.0,
    once: bool = False,
    console: Console | None = None,
) -> int:
    """Draw the view of the gateway at ``url`` every ``interval`` seconds until Ctrl-C.

    With ``once``, print one frame and return (for scripts and tests). While the gateway
    cannot be read, the view says why and keeps trying.
    """
    console = console or Console()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=10.0) as client:
        if once:
            try:
                console.print(render(fetch_status(client), source=url))
            except GatewayUnreachable as exc:
                raise SystemExit(f"gpulane: {exc}") from None
            return 0
        footer = f"every {interval:g}s · Ctrl-C to quit"
        try:
            with Live(console=console, auto_refresh=False, screen=False) as live:
                while True:
                    try:
                        frame = render(fetch_status(client), source=url, footer=footer)
                    except GatewayUnreachable as exc:
                        frame = Text(f"gpulane top: {exc} (retrying)", style="bold red")
                    live.update(frame, refresh=True)
                    time.sleep(interval)
        except KeyboardInterrupt:
            return 0
