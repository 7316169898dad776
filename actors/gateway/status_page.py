"""The live views over HTTP: ``GET /status`` (JSON) and the status page at ``/`` (for
browsers; other clients get Ollama's ``Ollama is running`` there).

``/status`` answers the picture ``gpulane top`` draws (see :mod:`actors.gateway.watch`):
the alerts firing (a red line each on the page, none when quiet), each backend's health,
a row per backend (state, resident models, busy and total slots, swaps; issue #17), the
GPU slots and their running jobs, resident models, the swap figures, the queue by
lane and priority, unfinished jobs per caller, job counts, counters and recent swaps and
preemptions. On PostgreSQL (several gateways) a strip under the header says this
gateway's role, who leads (and where, for a key holder), the lease's age and token; a
follower that cannot read the leader's picture (``leader_reachable`` false: no leader, or
the leader unreachable) shows that strip and why, and hides the lane's figures.

The page is static HTML with a small script that fetches ``/status`` every second and
redraws (no framework, no external assets: it works on an air-gapped host). A browser
cannot send a bearer key by itself, so without one the page shows aggregates only; open
``/#key=<api key>`` to see what that key may see. The script moves the key from the
URL fragment (which browsers never send to the server) into the tab's session storage
and sends it as ``Authorization: Bearer``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from actors.gateway.core import ViewerDep, gateway_of
from actors.gateway.watch import view_for

__all__ = ["OLLAMA_IS_RUNNING", "PAGE", "router"]

OLLAMA_IS_RUNNING = "Ollama is running"

router = APIRouter(tags=["ops"])

_STYLE = """
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;
 background:#eef1f5}
header{display:flex;align-items:center;gap:1.2rem;flex-wrap:wrap;padding:.8rem 1.5rem;
 background:#1d232b;color:#fff}
header h1{font-size:1.2rem;margin:0;letter-spacing:.02em}
.pill{padding:.15rem .6rem;border-radius:1rem;font-size:.85rem;font-weight:600}
.good{background:#2e7d32;color:#fff}.bad{background:#c62828;color:#fff}
#updated{margin-left:auto;font-size:.85rem;color:#b8c2cc}
#error{display:none;background:#c62828;color:#fff;padding:.5rem 1.5rem}
#down{background:#c62828;color:#fff}#down div{padding:.5rem 1.5rem;font-weight:600}
#alerts{background:#8e1b1b;color:#fff}#alerts div{padding:.5rem 1.5rem;font-weight:600}
#cluster{background:#2b3440;color:#dfe6ee;padding:.35rem 1.5rem;font-size:.9rem}
#cluster:empty{display:none}#cluster .pill{margin-right:.6rem}[hidden]{display:none!important}
.stats{display:flex;gap:1rem;flex-wrap:wrap;padding:1rem 1.5rem 0}
.stat{background:#fff;border-radius:.5rem;padding:.6rem 1rem;min-width:8.5rem;
 box-shadow:0 1px 2px #0002}
.stat b{display:block;font-size:1.9rem;font-variant-numeric:tabular-nums}
.stat span{font-size:.8rem;color:#5b6773;text-transform:uppercase;letter-spacing:.04em}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(24rem,1fr));gap:1rem;
 padding:1rem 1.5rem}
section{background:#fff;border-radius:.5rem;padding:.8rem 1rem;box-shadow:0 1px 2px #0002}
h2{font-size:.85rem;margin:0 0 .5rem;color:#5b6773;text-transform:uppercase;
 letter-spacing:.05em}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
td,th{padding:.3rem .5rem;border-bottom:1px solid #e3e7ec;text-align:left}
th{font-weight:600;color:#5b6773;font-size:.85rem}
td.n{text-align:right;font-size:1.15rem;font-weight:600}td.zero{color:#b5bec7;font-weight:400}
.busy{color:#b35900;font-weight:700}.idle{color:#2e7d32;font-weight:700}
.preempt{color:#c62828;font-weight:700}.swap{color:#1565c0;font-weight:700}
.muted{color:#7b8793}.t{white-space:nowrap}
.tag{background:#e3e7ec;border-radius:.3rem;padding:.05rem .4rem;margin-right:.3rem;
 display:inline-block}
"""

_SCRIPT = r"""
"use strict";
const KEY_ITEM = "gpulane-key";
function readKey() {
  const found = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (found) {
    sessionStorage.setItem(KEY_ITEM, decodeURIComponent(found[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY_ITEM);
}
const key = readKey();
function el(tag, props, ...kids) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const kid of kids) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}
function fill(id, ...kids) { document.getElementById(id).replaceChildren(...kids); }
function secs(s) {
  if (s === null || s === undefined) return "";
  return s < 90 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
function who(job) { return job ? "#" + job.seq + " " + job.caller : ""; }
function row(...cells) { return el("tr", {}, ...cells); }
function num(id, value) {
  return el("td", {id: id, className: value ? "n" : "n zero"}, value);
}
function stat(label, value, id) {
  return el("div", {className: "stat"}, el("b", {id: id}, value), el("span", {}, label));
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
function percent(ratio) { return ratio === null ? "\u2013" : (100 * ratio).toFixed(1) + " %"; }
function downLine(name, b, at) {
  let text = "backend " + name + " down since " + clock(b.since) + " (" + secs(at - b.since) + ")";
  if (b.next_probe_at !== null) {
    text += " \u00b7 next probe in " + secs(Math.max(0, b.next_probe_at - at));
  }
  text += " \u00b7 " + b.probes + " probe(s) so far";
  if (b.last_error) text += " \u00b7 last error: " + b.last_error;
  return el("div", {id: "down-" + name}, text);
}
function alertLine(a, i) {
  let text = "alert " + a.rule + (a.subject === null ? "" : " on " + a.subject) +
             " firing for " + secs(a.firing_s);
  text += a.summary === null ? " (details need another key)" : ": " + a.summary;
  return el("div", {id: "alert-" + i}, text);
}
function clusterLine(c) {
  const role = el("span", {id: "cluster-role", className: "pill " +
    (c.leader === null ? "bad" : "good")}, c.role);
  if (c.leader === null) {
    return [role, el("span", {id: "cluster-leader"},
                     c.node + " \u00b7 no leader: failover under way")];
  }
  const leader = c.role === "leader" ? "leader " + c.leader + " (this gateway)" :
    c.node + " follower of " + c.leader + (c.leader_url ? " (" + c.leader_url + ")" : "");
  let lease = " \u00b7 lease " + secs(c.lease_age_s) + " \u00b7 renewed " +
              secs(c.renewed_age_s) + " ago \u00b7 token " + c.token;
  if (c.takeovers) lease += " \u00b7 takeovers " + c.takeovers;
  return [role, el("span", {id: "cluster-leader"}, leader),
          el("span", {id: "cluster-lease"}, lease)];
}
function leaderless(c) {
  const state = document.getElementById("state");
  state.textContent = c.leader === null ? "no leader" : "leader unreachable";
  state.className = "pill bad";
  fill("alerts", el("div", {id: "alert-leader"}, c.leader === null
    ? "no leader: nothing is dispatched until a gateway takes the lease"
    : "this gateway cannot reach the leader " + c.leader + " for its status"));
  fill("health");
  fill("down");
  fill("updated", "updated " + new Date().toLocaleTimeString());
}
function describe(e) {
  if (e.kind === "swap") {
    if (e.slot === null) {
      return [el("span", {className: "swap"}, "swap"),
              " \u00d7" + e.count + " between two looks: " + e.models.join(", ")];
    }
    return [el("span", {className: "swap"}, "swap"), " " + e.slot + ": " +
            (e.from || "nothing") + " \u2192 " + e.to + (e.job ? " for " + who(e.job) : "")];
  }
  const victim = e.job ? who(e.job) + " (" + e.job.lane + ")" : "an external " + e.model + " call";
  const by = e.by ? " for " + who(e.by) + " (" + e.by.lane + "/" + e.by.priority + ")" : "";
  return [el("span", {className: "preempt"}, "preemption"),
          " " + e.slot + ": " + victim + " made way" + by];
}
function render(p) {
  fill("cluster", ...(p.cluster ? clusterLine(p.cluster) : []));
  const lane = p.leader_reachable !== false;
  for (const part of [document.getElementById("stats"), document.querySelector("main")]) {
    part.hidden = !lane;
  }
  if (!lane) return leaderless(p.cluster);
  const state = document.getElementById("state");
  state.textContent = p.paused ? "paused" : "dispatching";
  state.className = "pill " + (p.paused ? "bad" : "good");
  fill("alerts", ...p.alerts.map(alertLine));
  const backends = Object.entries(p.health);
  fill("health", ...backends.map(([name, b]) => el("span",
    {id: "health-" + name, className: "pill " + (b.state === "up" ? "good" : "bad")},
    name + " " + b.state)));
  fill("down", ...backends.filter(([, b]) => b.state !== "up")
                          .map(([name, b]) => downLine(name, b, p.at)));
  const busy = p.slots.filter(s => s.busy).length;
  fill("stats",
    stat("queued", p.queued, "queued"),
    stat("GPU slots busy", busy + " / " + p.slots.length, "busy"),
    stat("running", (p.jobs.loading || 0) + (p.jobs.running || 0), "running"),
    stat("succeeded", p.jobs.succeeded || 0, "succeeded"),
    stat("failed", p.jobs.failed || 0, "failed"),
    stat("swaps", p.counters.swaps, "swaps"),
    stat("swaps / hour", p.swaps_per_hour.toFixed(1), "swaps-per-hour"),
    stat("busy time loading", percent(p.overhead_ratio), "overhead"),
    stat("preemptions", p.counters.preemptions, "preemptions"));
  const prios = Object.keys(Object.values(p.depth)[0] || {});
  fill("queue",
    row(el("th"), ...prios.map(x => el("th", {}, x)), el("th", {}, "total")),
    ...Object.entries(p.depth).map(([lane, counts]) => {
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      return row(el("th", {}, lane), ...prios.map(x => num("q-" + lane + "-" + x, counts[x])),
                 num("q-" + lane, total));
    }));
  fill("backends",
    row(el("th", {}, "backend"), el("th", {}, "state"), el("th", {}, "resident"),
        el("th", {}, "slots busy"), el("th", {}, "swaps")),
    ...p.backends.map(b => row(
      el("td", {id: "b-" + b.name}, b.name + " ",
         ...b.labels.map(label => el("span", {className: "tag"}, label))),
      el("td", {id: "b-" + b.name + "-state", className: b.state === "up" ? "idle" : "preempt"},
         b.state),
      el("td", {id: "b-" + b.name + "-resident"}, b.resident.join(", ") || "\u2013"),
      el("td", {id: "b-" + b.name + "-busy", className: "t"}, b.busy + " / " + b.slots),
      el("td", {id: "b-" + b.name + "-swaps", className: "t"},
         b.swaps + " (" + b.swaps_per_hour.toFixed(1) + "/h)"))));
  fill("slots",
    row(el("th", {}, "slot"), el("th", {}, "backend"), el("th", {}, "state"), el("th", {}, "model"),
        el("th", {}, "job"), el("th", {}, "for"), el("th", {}, "next")),
    ...p.slots.map(s => row(
      el("td", {}, s.id),
      el("td", {id: "s-" + s.id + "-backend"}, s.backend),
      el("td", {className: s.busy ? "busy" : "idle"},
         s.cancelling ? "stopping (" + s.cancelling + ")" : s.busy ? "busy" : "idle"),
      el("td", {}, s.model || "\u2013"),
      el("td", {}, s.job ? who(s.job) + " \u00b7 " + s.job.lane + "/" + s.job.priority
                         : s.busy ? "(not yours)" : ""),
      el("td", {className: "t"}, secs(s.running_s)),
      el("td", {}, s.next ? who(s.next) : s.has_next ? "(not yours)" : ""))));
  fill("models", ...(p.resident_models.length
    ? p.resident_models.map(m => el("span", {className: "tag"}, m))
    : [el("span", {className: "muted"}, "none loaded")]));
  fill("callers",
    row(el("th", {}, "caller"), el("th", {}, "waiting or running"), el("th", {}, "on the GPU")),
    ...p.callers.map(c => row(el("td", {}, c.caller), num("c-" + c.caller, c.unfinished),
                              num("", c.running))));
  if (!p.callers.length) {
    document.getElementById("callers").append(row(el("td", {colSpan: 3, className: "muted"},
      p.viewer.caller === null ? "open /#key=<api key> to see callers" : "no work in flight")));
  }
  fill("jobs", ...Object.entries(p.jobs).map(([s, n]) => row(el("td", {}, s), num("j-" + s, n))));
  fill("events", ...(p.events.length
    ? p.events.map(e => row(el("td", {className: "muted t"}, secs(p.at - e.at) + " ago"),
                            el("td", {}, ...describe(e))))
    : [row(el("td", {className: "muted"}, "no swaps or preemptions seen yet"))]));
  const c = p.counters;
  fill("counters", ...["submitted", "dispatched", "dispatched_cold", "retries_requested",
                       "cancel_requests", "cancelled_queued"].map(
         k => row(el("td", {}, k.replaceAll("_", " ")), num("k-" + k, c[k]))),
       row(el("td", {}, "seconds loading models"), num("k-loading", p.loading_s.toFixed(1))),
       row(el("td", {}, "seconds busy"), num("k-busy", p.busy_s.toFixed(1))),
       ...backends.map(([name, b]) => row(el("td", {}, "seconds " + name + " was down"),
                                          num("k-down-" + name, b.down_s_total.toFixed(1)))));
  const viewer = p.viewer.caller === null ? "aggregates only" :
    "as " + p.viewer.caller + (p.viewer.admin ? " (admin)" : "");
  fill("updated", "updated " + clock(p.at) + " \u00b7 " + viewer);
}
async function tick() {
  const banner = document.getElementById("error");
  try {
    const response = await fetch("status", {
      headers: key ? {Authorization: "Bearer " + key} : {}, cache: "no-store"});
    const body = await response.json();
    if (!response.ok) throw new Error(response.status + ": " + (body.error || "error"));
    render(body);
    banner.style.display = "none";
  } catch (err) {
    banner.textContent = "cannot read /status: " + err.message + " (retrying)";
    banner.style.display = "block";
  } finally {
    setTimeout(tick, 1000);
  }
}
tick();
"""

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>gpulane</title><style>{_STYLE}</style></head>
<body>
<header><h1>gpulane</h1><span id="state" class="pill">connecting</span>
<span id="health"></span><span id="updated"></span></header>
<div id="error"></div><div id="cluster"></div><div id="alerts"></div><div id="down"></div>
<noscript><p>This page needs JavaScript; the same data is at <a href="status">/status</a>.</p>
</noscript>
<div class="stats" id="stats"></div>
<main>
<section><h2>Backends</h2><table id="backends"></table></section>
<section><h2>GPU</h2><table id="slots"></table>
<h2 style="margin-top:.8rem">Resident models</h2><div id="models"></div></section>
<section><h2>Queue by lane and priority</h2><table id="queue"></table></section>
<section><h2>Callers</h2><table id="callers"></table></section>
<section><h2>Recent swaps and preemptions</h2><table id="events"></table></section>
<section><h2>Jobs by state</h2><table id="jobs"></table></section>
<section><h2>Counters</h2><table id="counters"></table></section>
</main>
<script>{_SCRIPT}</script>
</body></html>
"""


@router.get("/", response_class=HTMLResponse, summary="Live status page, or Ollama's health check")
@router.head("/", summary="Ollama's health check")
async def status_page(request: Request) -> Response:
    """The page for a browser (it accepts ``text/html``; its script fetches ``/status``
    every second); for any other client ``Ollama is running``, as Ollama answers ``GET /``
    and ``HEAD /`` (the ``ollama`` CLI's heartbeat before every command is ``HEAD /``)."""
    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})
    return PlainTextResponse(OLLAMA_IS_RUNNING)


@router.get("/status", summary="The live views' picture (key optional: aggregates without)")
async def status(request: Request, viewer: ViewerDep) -> dict[str, Any]:
    """Alerts firing, slots, resident models, queue by lane and priority, callers, counters,
    recent events."""
    gateway = gateway_of(request)
    picture = await gateway.watch.picture(gateway.call)
    return view_for(picture, viewer)
