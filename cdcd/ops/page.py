"""The status page served at ``GET /``: one HTML document, no build step, no external assets.

It polls ``/status`` every ``REFRESH_MS`` and shows every table and destination with its state,
lag (and a sparkline of the lag over the last polls), time until data loss, throughput (events
applied per second between two polls), queued events and errors, plus this replica's leases and
the replicas it sees when ``/status`` has them. Everything is rendered with DOM text nodes (never
``innerHTML`` with data), so names from the source cannot inject markup.
"""

from __future__ import annotations

__all__ = ["REFRESH_MS", "STATUS_PAGE"]

REFRESH_MS = 2000

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cdcd status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #fafbfc; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  .meta { color: #5b6475; margin-bottom: 1em; }
  table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 1.5em; }
  th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e4e7ec; white-space: nowrap; }
  th { font-weight: 600; color: #5b6475; font-size: .85em; text-transform: uppercase; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .state { padding: .1em .45em; border-radius: .3em; font-size: .9em; }
  .ok { background: #dff5e3; } .warn { background: #fff1c2; } .bad { background: #fddcdc; }
  svg.spark { vertical-align: middle; }
  #error { color: #a4161a; }
</style>
</head>
<body>
<h1>cdcd</h1>
<div class="meta" id="meta">loading /status ...</div>
<div id="error"></div>
<table id="tables">
  <thead><tr><th>table</th><th>destination</th><th>state</th><th>lag</th><th>lag (recent)</th>
  <th>time until data loss</th><th>events/s</th><th>applied</th><th>queued</th><th>mode</th></tr></thead>
  <tbody></tbody>
</table>
<div id="cluster"></div>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const HISTORY = 60;
const history = new Map();   // "table -> dest" -> [lag seconds]
const previous = new Map();  // "table -> dest" -> [time ms, events applied]

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function seconds(v) {
  if (v === null || v === undefined) return "-";
  if (v < 60) return v.toFixed(1) + " s";
  if (v < 3600) return (v / 60).toFixed(1) + " min";
  if (v < 86400) return (v / 3600).toFixed(1) + " h";
  return (v / 86400).toFixed(1) + " d";
}
function stateClass(s) {
  if (["running", "done", "starting"].includes(s)) return "ok";
  if (["retrying", "draining", "waiting", "catching-up"].includes(s)) return "warn";
  return "bad";
}
function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg", w = 120, h = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("width", w); svg.setAttribute("height", h);
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => {
    const x = values.length < 2 ? 0 : (i * w) / (values.length - 1);
    return x.toFixed(1) + "," + (h - 2 - (v / max) * (h - 4)).toFixed(1);
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#3a6ea5"); line.setAttribute("stroke-width", "1.5");
  svg.appendChild(line);
  svg.dataset.points = String(values.length);
  return svg;
}
function renderCluster(st) {
  const box = document.getElementById("cluster");
  box.replaceChildren();
  if (Array.isArray(st.leases)) {
    box.appendChild(el("h2", "Leases of this replica"));
    const t = el("table"); t.id = "leases";
    const head = el("tr");
    for (const c of ["table", "group", "epoch", "expires in"]) head.appendChild(el("th", c));
    t.appendChild(head);
    for (const l of st.leases) {
      const r = el("tr");
      r.appendChild(el("td", l.table)); r.appendChild(el("td", l.group));
      r.appendChild(el("td", l.epoch, "num")); r.appendChild(el("td", seconds(l.expires_in_seconds), "num"));
      t.appendChild(r);
    }
    box.appendChild(t);
  }
  if (Array.isArray(st.replicas)) {
    box.appendChild(el("h2", "Replicas"));
    const ul = el("ul"); ul.id = "replicas";
    for (const r of st.replicas) ul.appendChild(el("li", typeof r === "string" ? r : (r.name || JSON.stringify(r))));
    box.appendChild(ul);
  }
}
function render(st) {
  const now = Date.now();
  document.getElementById("meta").textContent =
    "replica " + st.replica + " \\u00b7 version " + st.version + " \\u00b7 " + st.state +
    " \\u00b7 started " + st.started_at + " \\u00b7 updated " + new Date(now).toLocaleTimeString();
  const body = document.querySelector("#tables tbody");
  body.replaceChildren();
  const tables = st.tables || {};
  for (const table of Object.keys(tables).sort()) {
    const dests = tables[table].destinations || {};
    for (const dest of Object.keys(dests).sort()) {
      const d = dests[dest], key = table + " -> " + dest;
      const lags = history.get(key) || [];
      lags.push(d.lag_seconds === null || d.lag_seconds === undefined ? 0 : d.lag_seconds);
      if (lags.length > HISTORY) lags.shift();
      history.set(key, lags);
      let rate = null;
      const prev = previous.get(key);
      if (prev && now > prev[0]) rate = Math.max(0, (d.events_applied - prev[1]) * 1000 / (now - prev[0]));
      previous.set(key, [now, d.events_applied]);
      const row = el("tr");
      row.dataset.table = table; row.dataset.destination = dest;
      row.appendChild(el("td", table));
      row.appendChild(el("td", dest));
      const stc = el("td"); stc.appendChild(el("span", d.state, "state " + stateClass(d.state))); row.appendChild(stc);
      row.appendChild(el("td", seconds(d.lag_seconds), "num lag"));
      const sp = el("td"); sp.appendChild(sparkline(lags)); row.appendChild(sp);
      row.appendChild(el("td", seconds(d.time_until_data_loss_seconds), "num"));
      row.appendChild(el("td", rate === null ? "-" : rate.toFixed(1), "num rate"));
      row.appendChild(el("td", d.events_applied, "num applied"));
      row.appendChild(el("td", d.queue_depth, "num"));
      const modes = d.modes ? Object.entries(d.modes).map(([m, n]) => m + " " + n).join(", ") : "-";
      row.appendChild(el("td", modes));
      body.appendChild(row);
    }
  }
  renderCluster(st);
}
async function poll() {
  try {
    const r = await fetch("status", { cache: "no-store" });
    if (!r.ok) throw new Error("/status answered " + r.status);
    render(await r.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot load /status: " + e.message;
  }
  setTimeout(poll, REFRESH_MS);
}
poll();
</script>
</body>
</html>
""".replace("__REFRESH_MS__", str(REFRESH_MS))
