"""The live view's page (:mod:`lemo_edge.runtime.liveview`): one HTML document with its CSS and plain JS inline.

Nothing is fetched from elsewhere (a box on a plant network reaches no CDN): the chart is drawn on a canvas. The
page passes its own ``?token=`` on to the stream, status and thumbnail requests. Data is put into the document with
``textContent`` only. For tests the page exposes its progress as ``data-*`` attributes: ``body[data-frame]`` is
``1`` once a frame of the stream is shown, ``canvas#chart[data-points]`` the points drawn and
``canvas#chart[data-last-frame]`` the newest frame on the chart, ``body[data-status]`` ``ok`` or ``error``.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lemo-edge live</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #15181c; color: #e6e6e6; }
  header { padding: 8px 16px; background: #23272e; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 16px; margin: 0; }
  #conn { font-size: 12px; color: #9aa0a6; }
  main { display: grid; grid-template-columns: minmax(320px, 2fr) minmax(280px, 1fr); gap: 12px; padding: 12px; }
  section { background: #1d2126; border-radius: 6px; padding: 10px; }
  h2 { font-size: 13px; margin: 0 0 6px; color: #9aa0a6; text-transform: uppercase; letter-spacing: .05em; }
  #frame { width: 100%; height: 50vh; object-fit: contain; background: #000; display: block; }
  #chart { width: 100%; height: 180px; display: block; }
  table { border-collapse: collapse; width: 100%; }
  td { padding: 2px 4px; border-bottom: 1px solid #2b3037; }
  td:first-child { color: #9aa0a6; }
  .anomaly { color: #ff5c5c; font-weight: 600; }
  .normal { color: #5cd65c; }
  #anomalies { display: flex; flex-wrap: wrap; gap: 8px; }
  #anomalies figure { margin: 0; width: 160px; font-size: 12px; }
  #anomalies img { width: 160px; display: block; }
  .legend span { margin-right: 12px; font-size: 12px; }
</style>
</head>
<body data-frame="0" data-status="loading">
<header><h1>lemo-edge live</h1><span id="conn">connecting...</span></header>
<main>
  <div>
    <section><h2>Current frame</h2><img id="frame" alt="current frame with its anomaly overlay"></section>
    <section><h2>Score over time</h2>
      <canvas id="chart" width="800" height="180" data-points="0" data-last-frame="-1"></canvas>
      <div class="legend"><span style="color:#4da3ff">&#9644; score</span>
        <span style="color:#ffb347">&#9476; threshold</span><span style="color:#ff5c5c">&#9679; anomaly</span></div>
    </section>
    <section><h2>Last anomalies</h2><div id="anomalies"></div></section>
  </div>
  <div>
    <section><h2>Counts</h2><table id="counts"></table></section>
    <section><h2>Model and memory</h2><table id="model"></table></section>
  </div>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const frame = document.getElementById("frame");
const chart = document.getElementById("chart");

function startStream() { frame.src = "stream.mjpg" + q + (q ? "&" : "?") + "t=" + Date.now(); }
frame.addEventListener("load", () => { if (frame.naturalWidth > 0) document.body.dataset.frame = "1"; });
frame.addEventListener("error", () => setTimeout(startStream, 2000));
setInterval(() => { if (frame.naturalWidth > 0) document.body.dataset.frame = "1"; }, 250);
startStream();

function fmt(v, digits) {
  if (v === null || v === undefined) return "n/a";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(digits || 4);
  return String(v);
}

function fillTable(id, rows) {
  const table = document.getElementById(id);
  const body = document.createElement("tbody");
  for (const [key, value, cls] of rows) {
    const tr = document.createElement("tr");
    const k = document.createElement("td"); k.textContent = key;
    const v = document.createElement("td"); v.textContent = fmt(value);
    if (cls) v.className = cls;
    tr.append(k, v); body.append(tr);
  }
  table.replaceChildren(body);
}

function drawChart(h) {
  const ctx = chart.getContext("2d");
  const W = chart.width, H = chart.height, pad = 28;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#15181c"; ctx.fillRect(0, 0, W, H);
  const n = h.score.length;
  chart.dataset.points = String(n);
  chart.dataset.lastFrame = String(n ? h.frame[n - 1] : -1);
  if (!n) return;
  let top = 0;
  for (let i = 0; i < n; i++) {
    if (h.score[i] !== null) top = Math.max(top, h.score[i]);
    if (h.threshold[i] !== null) top = Math.max(top, h.threshold[i]);
  }
  top = top > 0 ? top * 1.1 : 1;
  const x = i => pad + (n > 1 ? i * (W - pad - 4) / (n - 1) : 0);
  const y = v => H - pad / 2 - (v / top) * (H - pad);
  ctx.strokeStyle = "#2b3037"; ctx.lineWidth = 1; ctx.fillStyle = "#9aa0a6"; ctx.font = "11px sans-serif";
  for (const f of [0, 0.5, 1]) {
    const yy = y(top * f); ctx.beginPath(); ctx.moveTo(pad, yy); ctx.lineTo(W, yy); ctx.stroke();
    ctx.fillText((top * f).toPrecision(2), 0, yy + 4);
  }
  function line(values, colour, dash) {
    ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.setLineDash(dash); ctx.beginPath();
    let open = false;
    for (let i = 0; i < n; i++) {
      if (values[i] === null) { open = false; continue; }
      if (open) ctx.lineTo(x(i), y(values[i])); else { ctx.moveTo(x(i), y(values[i])); open = true; }
    }
    ctx.stroke(); ctx.setLineDash([]);
  }
  line(h.threshold, "#ffb347", [5, 4]);
  line(h.score, "#4da3ff", []);
  ctx.fillStyle = "#ff5c5c";
  for (let i = 0; i < n; i++) {
    if (h.anomaly[i] && h.score[i] !== null) { ctx.beginPath(); ctx.arc(x(i), y(h.score[i]), 3, 0, 7); ctx.fill(); }
  }
}

function showAnomalies(list) {
  const box = document.getElementById("anomalies");
  const figures = list.map(a => {
    const fig = document.createElement("figure");
    const img = document.createElement("img"); img.src = a.thumb + q; img.alt = "anomaly at frame " + a.frame;
    const cap = document.createElement("figcaption");
    cap.textContent = "frame " + a.frame + ", score " + fmt(a.score) + ", " + a.time;
    fig.append(img, cap); return fig;
  });
  if (!figures.length) { const p = document.createElement("p"); p.textContent = "none yet"; figures.push(p); }
  box.replaceChildren(...figures);
}

async function poll() {
  try {
    const r = await fetch("status.json" + q, { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    const c = s.counts, m = s.model;
    fillTable("counts", [
      ["frames", c.frames], ["anomalies", c.anomalies], ["learned", c.learned], ["fps", c.fps],
      ["last frame", c.last_frame], ["score", c.score], ["threshold", c.threshold],
      ["decision", c.decision, c.decision], ["reason", c.reason], ["latency (ms)", c.latency_ms],
      ["failing sinks", c.failing_sinks && c.failing_sinks.length ? c.failing_sinks.join(", ") : "none"],
    ]);
    fillTable("model", m && m.backbone ? [
      ["backbone", m.backbone], ["input size", m.input_size], ["memory", m.method],
      ["memory items", m.memory_items + " / " + m.memory_capacity], ["memory device", m.memory_device],
      ["frames seen", m.seen], ["updates", m.updates], ["refused", m.rejected],
      ["warm-up", m.warming_up ? "in progress (" + m.seen + " / " + m.warmup + ")" : "done"],
    ] : [["model", "not attached"]]);
    drawChart(s.history);
    showAnomalies(s.anomalies);
    document.body.dataset.status = "ok";
    document.getElementById("conn").textContent = "live, updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.body.dataset.status = "error";
    document.getElementById("conn").textContent = "disconnected (" + e.message + "), retrying";
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body>
</html>
"""
