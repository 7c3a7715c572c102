// Loopy dashboard: polls the node's read-only JSON routes and draws them as inline SVG.
// No framework and no build step. Everything a peer wrote (descriptions, topics, ids) is
// untrusted: it goes into the page with textContent, never as markup.
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf", "#bcbd22", "#7f7f7f"];
const STATUS_COLOUR = {kept: "#1a7f37", discarded: "#9aa3ab", baseline: "#0969da",
                       crash: "#cf222e", refuted: "#cf222e"};
const MAX_LABELS = 30;
const TREE_ROW = 24, TREE_COL = 16, TREE_MAX_COLS = 24;

const state = {
  arena: "", topic: "", xAxis: "n", colourBy: "status",
  tags: {}, data: {status: null, experiments: null, lineage: null, peers: null},
  firstRender: null,
};

// -- small helpers -------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtBpb(v) { return typeof v === "number" ? v.toFixed(4) : "–"; }
function fmtDelta(v) { return typeof v === "number" ? (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(4) : ""; }
function shortId(id) { return id ? String(id).slice(0, 8) : "–"; }
function shortPeer(p) { return p ? "…" + String(p).slice(-8) : "–"; }
function fmtTime(ms) {
  if (typeof ms !== "number") return "–";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function fmtAgo(ms) {
  if (typeof ms !== "number") return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
// "[MATRIX_LR*2] MATRIX_LR x2: ..." -> "MATRIX_LR*2"; other descriptions are cut short
function shortDesc(desc) {
  const m = /^\[([^\]]{1,40})\]/.exec(desc || "");
  if (m) return m[1];
  const s = (desc || "").trim();
  return s.length > 28 ? s.slice(0, 27) + "…" : s;
}

function query() {
  const q = new URLSearchParams();
  if (state.arena) q.set("arena", state.arena);
  if (state.topic) q.set("topic", state.topic);
  const s = q.toString();
  return s ? "?" + s : "";
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// -- fetching ------------------------------------------------------------------

async function fetchJSON(key, path) {
  const response = await fetch(path, {cache: "no-cache"});
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
  }
  const tag = response.headers.get("ETag") || String(Math.random());
  const changed = state.tags[key] !== tag;
  state.tags[key] = tag;
  state.data[key] = body;
  return changed;
}

async function refresh(force) {
  const q = query();
  const results = await Promise.allSettled([
    fetchJSON("status", "/api/status"),
    fetchJSON("experiments", "/api/experiments" + q),
    fetchJSON("lineage", "/api/lineage" + q),
    fetchJSON("peers", "/api/peers"),
  ]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  const changed = results.map((r) => r.status === "fulfilled" && (r.value || force));
  const t0 = performance.now();
  const d = state.data;
  if (d.status && (changed[0] || changed[1])) renderSummary(d.status, d.experiments, d.peers);
  if (d.experiments && changed[1]) { renderControls(d.experiments); renderChart(d.experiments, d.status); renderRecent(d.experiments); }
  if (d.lineage && changed[2]) renderLineage(d.lineage);
  if (d.peers && (changed[3] || changed[0])) renderPeers(d.peers);
  if (d.status && d.peers && changed[3] && !changed[0] && !changed[1]) renderSummary(d.status, d.experiments, d.peers);
  const t1 = performance.now();
  showError(failed.length ? failed[0] : null, failed.length === results.length);
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  if (d.experiments && d.lineage && !failed.length) {
    document.body.dataset.renderMs = (t1 - t0).toFixed(1);
    if (state.firstRender === null) {
      state.firstRender = t1;
      document.body.dataset.firstRenderMs = t1.toFixed(1);
      document.body.dataset.ready = "1";
    }
  }
}

function showError(message, unreachable) {
  const banner = $("error");
  banner.hidden = !message;
  banner.textContent = message ? (unreachable ? "The node does not answer (stopped?): " : "") + message : "";
  if (unreachable) setLive("unreachable", "down");
}

function setLive(text, cls) {
  const live = $("live");
  live.textContent = text;
  live.className = "badge " + cls;
}

async function poll() {
  // a hidden tab does not poll; it catches up when shown again
  if (!document.hidden || state.firstRender === null) {
    try { await refresh(false); } catch (e) { showError(String(e), true); }
  }
  setTimeout(poll, POLL_MS);
}

// -- summary -------------------------------------------------------------------

function renderSummary(status, exp, peers) {
  if (status.running) setLive("live", "live"); else setLive("not running: data from the store", "stopped");
  const me = peers && peers.peers.find((p) => p.me);
  $("node").textContent = status.peer_id || (me && me.peer_id) || "–";
  $("node-note").textContent = [status.arena && "arena " + status.arena, status.genome && "genome " + status.genome,
    status.topics && status.topics.length && "topics " + status.topics.join(", ")].filter(Boolean).join(" · ");
  if (exp) {
    const best = exp.best;
    $("best").textContent = best ? fmtBpb(best.val_bpb) : "–";
    const root = exp.root && exp.root.val_bpb;
    $("best-note").textContent = !best ? "no score yet: the node measures the genome first"
      : best.genome_root ? "the genome itself: no verified improvement yet"
      : `record ${shortId(best.id)} · ${fmtDelta(best.val_bpb - root)} against the genome (${fmtBpb(root)})`;
    const c = exp.counts || {};
    $("count").textContent = String(c.experiments || 0);
    $("count-note").textContent = `${c.kept || 0} kept · ${c.discarded || 0} discarded · ${c.crashed || 0} crashed · ${c.refuted || 0} refuted · ${c.baselines || 0} baseline runs`;
    $("sigma").textContent = typeof exp.sigma === "number" ? exp.sigma.toFixed(4) : "measuring";
    $("sigma-note").textContent = typeof exp.sigma === "number"
      ? `an edit is kept when it beats its parent by ${exp.noise_k}σ = ${(exp.noise_k * exp.sigma).toFixed(4)}`
      : "needs baseline runs with several seeds";
    $("synthetic").hidden = !exp.synthetic;
  }
  const connected = (status.peers || []).length;
  $("peer-count").textContent = status.offline ? "offline" : String(connected);
  $("peer-note").textContent = peers ? `${connected} connected · ${peers.peers.filter((p) => !p.me).length} known` : "";
  const cur = status.current;
  const bar = $("current-progress");
  if (cur && typeof cur === "object") {
    const frac = typeof cur.fraction === "number" ? cur.fraction : 0;
    $("current").textContent = `${cur.desc || ""} (parent ${shortId(cur.parent)})` +
      (typeof cur.loss === "number" ? ` · loss ${cur.loss.toFixed(4)}` : "");
    bar.hidden = false;
    bar.value = Math.max(0, Math.min(1, frac));
  } else {
    $("current").textContent = status.running ? "between experiments" : "–";
    bar.hidden = true;
  }
  const ver = Array.isArray(status.verifying) ? status.verifying : [];
  $("verifying").textContent = ver.length ? "verifying: " + ver.map((v) => `${shortId(v.id)} ${v.desc || ""} (claimed ${fmtBpb(v.claimed)})`).join("; ") : "";
}

function renderControls(exp) {
  const arenaSel = $("arena");
  const arenas = exp.arenas || [];
  const wantArena = state.arena || exp.arena || "";
  arenaSel.replaceChildren(...arenas.map((a) => html("option", {value: a.arena}, `${a.arena} (${a.experiments})`)));
  arenaSel.value = wantArena;
  const topicSel = $("topic");
  topicSel.replaceChildren(html("option", {value: ""}, "all"), ...(exp.topics || []).map((t) => html("option", {value: t}, t)));
  topicSel.value = state.topic;
}

// -- the progress chart ----------------------------------------------------------

function colourKeys(rows, by) {
  // author or topic -> palette index, in order of first appearance
  const keys = new Map();
  for (const r of rows) {
    const k = by === "author" ? r.author : r.topic;
    if (!keys.has(k)) keys.set(k, keys.size % PALETTE.length);
  }
  return keys;
}

function kindOf(r) {
  if (r.status !== "ok") return "crash";
  if (r.baseline) return "baseline";
  return r.kept ? "kept" : "discarded";
}

function tooltip(r, n) {
  const lines = [`#${n} ${r.desc}`,
    r.status === "ok" ? `val_bpb ${fmtBpb(r.val_bpb)} ${fmtDelta(r.delta)}` : `${r.status}`,
    `${kindOf(r)}${r.verified ? ", verified" : ", not verified"}${r.refuted ? ", REFUTED" : ""}`,
    `topic ${r.topic} · author ${r.author}`, `record ${r.id.slice(0, 16)} · ${fmtTime(r.t)}`];
  return lines.join("\n");
}

function renderChart(exp, status) {
  const chart = $("chart");
  const W = 1000, H = 440, L = 64, R = 16, T = 36, B = 42;
  const rows = exp.experiments || [];
  const best = exp.running_best || [];
  const out = document.createDocumentFragment();
  if (!rows.length) {
    out.appendChild(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"},
      exp.arena ? "no experiments in this arena yet" : "no experiments yet: start the node"));
    chart.replaceChildren(out);
    renderLegend(exp, status);
    return;
  }
  // y: lower is better; the range follows the useful results, outliers are clipped
  const ok = rows.filter((r) => r.status === "ok" && typeof r.val_bpb === "number").map((r) => r.val_bpb).sort((a, b) => a - b);
  let lo = ok.length ? ok[0] : 0, hi = ok.length ? ok[Math.floor(0.9 * (ok.length - 1))] : 1;
  for (const v of best) if (typeof v === "number") hi = Math.max(hi, v);
  if (exp.root && typeof exp.root.val_bpb === "number") hi = Math.max(hi, exp.root.val_bpb);
  const pad = (hi - lo) * 0.08 || 0.01;
  lo -= pad; hi += pad;
  const byTime = state.xAxis === "t";
  const xs = rows.map((r, i) => byTime ? r.t : i + 1);
  let x0 = byTime ? xs[0] : 0, x1 = byTime ? xs[xs.length - 1] : rows.length + 1;
  if (x1 <= x0) x1 = x0 + 1;
  const X = (v) => L + (v - x0) / (x1 - x0) * (W - L - R);
  const Y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
  const crashY = T - 18;

  // grid and axes
  const grid = svg("g", {class: "grid"}), axis = svg("g", {class: "axis"});
  for (const v of niceTicks(lo, hi, 6)) {
    grid.appendChild(svg("line", {x1: L, x2: W - R, y1: Y(v), y2: Y(v)}));
    axis.appendChild(svg("text", {x: L - 6, y: Y(v) + 4, "text-anchor": "end"}, v.toFixed(3)));
  }
  const xt = byTime ? niceTicks(x0, x1, 6) : niceTicks(Math.max(1, x0), x1 - 1, 8).filter((v) => Number.isInteger(v));
  for (const v of xt) {
    grid.appendChild(svg("line", {x1: X(v), x2: X(v), y1: T, y2: H - B}));
    axis.appendChild(svg("text", {x: X(v), y: H - B + 16, "text-anchor": "middle"}, byTime ? fmtTime(v).slice(5) : String(v)));
  }
  axis.appendChild(svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B}));
  axis.appendChild(svg("line", {x1: L, x2: L, y1: T, y2: H - B}));
  out.appendChild(grid);
  out.appendChild(axis);
  out.appendChild(svg("text", {x: 14, y: (T + H - B) / 2, class: "axis-label", "text-anchor": "middle",
    transform: `rotate(-90 14 ${(T + H - B) / 2})`}, "val_bpb (lower is better)"));
  out.appendChild(svg("text", {x: (L + W - R) / 2, y: H - 6, class: "axis-label", "text-anchor": "middle"},
    byTime ? "time (author's clock)" : "experiment #"));
  if (rows.some((r) => r.status !== "ok")) {
    out.appendChild(svg("text", {x: L - 6, y: crashY + 4, class: "crash-band", "text-anchor": "end"}, "crashed"));
  }

  // the running best (verified), a step line
  let d = "", prev = null;
  best.forEach((v, i) => {
    if (typeof v !== "number") return;
    const px = X(xs[i]).toFixed(1), py = Y(v).toFixed(1);
    d += prev === null ? `M${px},${py}` : `H${px}V${py}`;
    prev = py;
  });
  if (d) { d += `H${(W - R).toFixed(1)}`; out.appendChild(svg("path", {d, class: "best-line"})); }

  // every experiment as a point. Colours come from classes (app.css): the colour
  // toggle only changes the chart's class, and thousands of points stay cheap to build.
  const authors = colourKeys(rows, "author"), topics = colourKeys(rows, "topic");
  const points = svg("g", {class: "points"});
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const kind = kindOf(r);
    const px = X(xs[i]);
    let node, cls = "pt " + kind + " a" + authors.get(r.author) + " t" + topics.get(r.topic);
    if (kind === "crash") {
      node = document.createElementNS(SVG_NS, "path");
      node.setAttribute("d", `M${(px - 3.5).toFixed(1)},${crashY - 3.5}l7,7m-7,0l7,-7`);
    } else {
      node = document.createElementNS(SVG_NS, "circle");
      node.setAttribute("cx", px.toFixed(1));
      node.setAttribute("cy", Y(Math.min(r.val_bpb, hi)).toFixed(1));
      cls += r.verified ? " verified" : " unverified";
      if ((kind === "kept" && !r.verified) || r.refuted) cls += " hollow";
      if (r.refuted) cls += " refuted";
      if (r.val_bpb > hi) cls += " clipped";
    }
    node.setAttribute("class", cls);
    node.setAttribute("data-id", r.id);
    node.setAttribute("data-i", i);  // the tooltip is built on hover
    points.appendChild(node);
  }
  out.appendChild(points);

  // label the edits that moved the running best (the biggest moves if there are many)
  const moves = [];
  best.forEach((v, i) => {
    const before = i > 0 ? best[i - 1] : null;
    if (typeof v === "number" && before !== null && typeof before === "number" && v < before && !rows[i].baseline) {
      moves.push({i, gain: before - v});
    }
  });
  moves.sort((a, b) => b.gain - a.gain);
  const labels = svg("g", {class: "labels"});
  for (const m of moves.slice(0, MAX_LABELS)) {
    const px = X(xs[m.i]), py = Y(rows[m.i].val_bpb) - 8;
    labels.appendChild(svg("text", {x: px.toFixed(1), y: py.toFixed(1), class: "kept-label",
      transform: `rotate(-30 ${px.toFixed(1)} ${py.toFixed(1)})`}, shortDesc(rows[m.i].desc)));
  }
  out.appendChild(labels);
  chart.replaceChildren(out);
  chart.setAttribute("class", "by-" + state.colourBy);
  renderLegend(exp, status);
}

function swatch(shape, fill, stroke) {
  const s = svg("svg", {width: 14, height: 14, viewBox: "0 0 14 14"});
  if (shape === "line") s.appendChild(svg("path", {d: "M1,10H7V4H13", fill: "none", stroke: fill, "stroke-width": 2}));
  else if (shape === "x") s.appendChild(svg("path", {d: "M3,3L11,11M3,11L11,3", stroke: fill, "stroke-width": 1.8}));
  else s.appendChild(svg("circle", {cx: 7, cy: 7, r: shape === "small" ? 3 : 5, fill, stroke: stroke || "none", "stroke-width": 1.6}));
  return s;
}

function legendItem(sw, text) {
  const span = html("span");
  span.appendChild(sw);
  span.appendChild(document.createTextNode(text));
  return span;
}

function renderLegend(exp, status) {
  const legend = $("legend");
  const items = [legendItem(swatch("line", STATUS_COLOUR.kept), "running best (verified)")];
  if (state.colourBy === "status") {
    items.push(legendItem(swatch("dot", STATUS_COLOUR.kept, "#24292f"), "kept, verified"),
      legendItem(swatch("dot", "#ffffff", STATUS_COLOUR.kept), "kept, not verified yet"),
      legendItem(swatch("small", STATUS_COLOUR.discarded), "discarded"),
      legendItem(swatch("dot", STATUS_COLOUR.baseline, "#24292f"), "genome baseline"),
      legendItem(swatch("dot", "#ffffff", STATUS_COLOUR.refuted), "refuted"),
      legendItem(swatch("x", STATUS_COLOUR.crash), "crashed / timed out / rejected"));
  } else {
    const me = status && status.peer_id;
    const keys = [...colourKeys(exp.experiments || [], state.colourBy)];
    for (const [k, index] of keys.slice(0, 2 * PALETTE.length)) {
      const name = state.colourBy === "author" ? shortPeer(k) + (k === me ? " (this node)" : "") : k;
      items.push(legendItem(swatch("dot", PALETTE[index], "#24292f"), name));
    }
    if (keys.length > PALETTE.length) {
      items.push(legendItem(swatch("small", "#ffffff"), `${keys.length} ${state.colourBy}s: colours repeat` +
        (keys.length > 2 * PALETTE.length ? `, ${keys.length - 2 * PALETTE.length} more not listed` : "")));
    }
    items.push(legendItem(swatch("small", "#9aa3ab"), "small: discarded · hollow: not verified or refuted · ×: crashed"));
  }
  legend.replaceChildren(...items);
}

// -- the lineage tree ------------------------------------------------------------

function layoutTree(lineage) {
  const rootId = lineage.root.id;
  const children = new Map();
  for (const n of lineage.nodes) {
    if (!children.has(n.parent)) children.set(n.parent, []);
    children.get(n.parent).push(n);
  }
  // the child towards the best record (else the best subtree) continues its parent's
  // column, drawn last; other children branch off to the right, above it
  const bestBelow = new Map();
  const scoreOf = (node) => {
    const id = node.id;
    if (bestBelow.has(id)) return bestBelow.get(id);
    let s = typeof node.val_bpb === "number" ? node.val_bpb : Infinity;
    const stack = [id], seen = new Set();
    while (stack.length) {
      const cur = stack.pop();
      if (seen.has(cur)) continue;
      seen.add(cur);
      for (const c of children.get(cur) || []) {
        if (typeof c.val_bpb === "number") s = Math.min(s, c.val_bpb);
        stack.push(c.id);
      }
    }
    bestBelow.set(id, s);
    return s;
  };
  const order = [];
  const stack = [{id: rootId, col: 0, node: null}];
  const seen = new Set();
  while (stack.length) {
    const item = stack.pop();
    if (seen.has(item.id)) continue;
    seen.add(item.id);
    order.push(item);
    const kids = (children.get(item.id) || []).slice();
    if (!kids.length) continue;
    kids.sort((a, b) => (a.best - b.best) || (scoreOf(b) - scoreOf(a)) || (a.t - b.t));
    const main = kids.pop();  // best path, or the subtree with the best score
    // the stack pops last-in first: push the main child first so it is drawn last
    stack.push({id: main.id, col: item.col, node: main, parent: item});
    for (let k = kids.length - 1; k >= 0; k--) {
      stack.push({id: kids[k].id, col: Math.min(item.col + 1, TREE_MAX_COLS), node: kids[k], parent: item});
    }
  }
  return order;
}

function renderLineage(lineage) {
  const tree = $("lineage");
  const order = layoutTree(lineage);
  const maxCol = order.reduce((m, o) => Math.max(m, o.col), 0);
  const textX = 18 + (maxCol + 1) * TREE_COL;
  const width = Math.max(900, textX + 860);
  const height = 12 + order.length * TREE_ROW;
  tree.setAttribute("width", width);
  tree.setAttribute("height", height);
  const pos = new Map();
  order.forEach((o, row) => pos.set(o.id, {x: 12 + o.col * TREE_COL, y: 18 + row * TREE_ROW}));
  const edges = svg("g", {class: "edges"}), nodes = svg("g", {class: "nodes"});
  order.forEach((o) => {
    const p = pos.get(o.id);
    if (o.parent) {
      const q = pos.get(o.parent.id);
      edges.appendChild(svg("path", {d: `M${q.x},${q.y}V${p.y - (p.x === q.x ? 0 : 6)}${p.x === q.x ? "" : `Q${q.x},${p.y} ${q.x + 6},${p.y}H${p.x}`}`,
        class: "edge" + (o.node && o.node.best ? " best" : "")}));
    }
    const n = o.node;
    const g = svg("g", {class: "node" + (n ? "" : " root") + (n && n.best ? " best" : "") + (n && n.head ? " head" : ""),
      "data-id": o.id});
    const fill = !n ? "#0969da" : n.refuted ? "#ffffff" : n.verified ? "#1a7f37" : "#ffffff";
    const stroke = !n ? "#0969da" : n.refuted ? "#cf222e" : n.verified ? "#1a7f37" : "#9a6700";
    g.appendChild(svg("circle", {cx: p.x, cy: p.y, r: n && n.best ? 5.5 : 4.5, fill, stroke, "stroke-width": 2}));
    const text = svg("text", {x: textX, y: p.y + 4});
    text.appendChild(svg("tspan", {class: "val"}, fmtBpb(n ? n.val_bpb : lineage.root.val_bpb)));
    if (n) {
      text.appendChild(svg("tspan", {dx: 8, class: typeof n.delta === "number" && n.delta < 0 ? "good" : "bad"}, fmtDelta(n.delta)));
      const [label, cls] = n.refuted ? ["✗ refuted", "bad"] : n.verified ? ["✓ verified", "good"] : ["unverified", "warn"];
      text.appendChild(svg("tspan", {dx: 8, class: cls}, label));
      text.appendChild(svg("tspan", {dx: 8, class: "desc"}, (n.desc || "").slice(0, 120)));
      text.appendChild(svg("tspan", {dx: 8, class: "meta"}, `${n.topic} · ${shortPeer(n.author)} · ${shortId(n.id)}${n.best ? " · best" : ""}${n.detached ? " · parent outside this view" : ""}`));
    } else {
      text.appendChild(svg("tspan", {dx: 8, class: "desc"}, lineage.root.desc || "genome"));
    }
    g.appendChild(text);
    g.appendChild(svg("title", {}, n ? `${n.desc}\nval_bpb ${fmtBpb(n.val_bpb)} ${fmtDelta(n.delta)}\nrecord ${n.id}\nauthor ${n.author}` : "the genome: base train.py"));
    nodes.appendChild(g);
  });
  tree.replaceChildren(edges, nodes);
  const heads = lineage.nodes.filter((n) => n.head).length;
  $("lineage-note").textContent = lineage.nodes.length
    ? `${lineage.kept} kept edits, ${heads} heads${lineage.truncated ? ` (the ${lineage.kept - lineage.truncated} best shown)` : ""}; the bold green path is the best lineage`
    : "no kept edits yet";
  const link = $("patch-link");
  if (lineage.best) {
    link.setAttribute("href", "/best.patch" + query());
    link.classList.remove("disabled");
    link.removeAttribute("aria-disabled");
    link.textContent = `Download best-lineage patch (${shortId(lineage.best)})`;
  } else {
    link.removeAttribute("href");
    link.classList.add("disabled");
    link.setAttribute("aria-disabled", "true");
    link.textContent = "no verified improvement to download yet";
  }
}

// -- tables --------------------------------------------------------------------

function row(cells) {
  const tr = html("tr");
  for (const c of cells) {
    const td = html("td", c.cls ? {class: c.cls} : {}, c.text);
    if (c.title) td.title = c.title;
    tr.appendChild(td);
  }
  return tr;
}

function renderPeers(peers) {
  const body = $("peers").tBodies[0];
  body.replaceChildren(...peers.peers.map((p) => row([
    {text: shortPeer(p.peer_id) + (p.me ? " (this node)" : ""), title: p.peer_id, cls: "mono"},
    {text: p.me ? "this node" : p.connected ? "connected" : "known", cls: p.connected || p.me ? "good" : ""},
    {text: p.me ? "–" : (p.reputation >= 0 ? "+" : "") + p.reputation.toFixed(0) + (p.liar ? " liar" : p.trusted ? " trusted" : ""),
     cls: p.liar ? "bad" : p.trusted ? "good" : ""},
    {text: String(p.experiments), cls: "num"},
    {text: String(p.kept), cls: "num"},
    {text: (p.topics || []).join(", ") || "–"},
    {text: p.working_on || "–", cls: "desc"},
    {text: p.me ? "–" : fmtAgo(p.last_seen)},
  ])));
  const t = peers.trust || {};
  $("trust-note").textContent = `verified = this node ran or re-ran it, or ${t.k} peers with reputation ≥ ${t.trust_threshold} reproduced it; below ${t.liar_threshold} a peer counts as a liar`;
}

function renderRecent(exp) {
  const rows = (exp.experiments || []).slice(-15).reverse();
  $("recent").tBodies[0].replaceChildren(...rows.map((r) => row([
    {text: fmtTime(r.t)},
    {text: shortPeer(r.author), title: r.author, cls: "mono"},
    {text: r.topic},
    {text: r.status !== "ok" ? r.status : r.baseline ? "baseline" : r.kept ? "kept" : "discarded",
     cls: r.status !== "ok" ? "bad" : r.kept ? "good" : ""},
    {text: fmtBpb(r.val_bpb), cls: "num"},
    {text: fmtDelta(r.delta), cls: "num " + (typeof r.delta === "number" && r.delta < 0 ? "good" : "")},
    {text: r.refuted ? "refuted" : r.verified ? "yes" : "not yet", cls: r.refuted ? "bad" : r.verified ? "good" : ""},
    {text: r.desc, cls: "desc"},
  ])));
}

// -- controls ------------------------------------------------------------------

function showTip(event) {
  const tip = $("tip");
  const i = event.target.getAttribute && event.target.getAttribute("data-i");
  const rows = state.data.experiments ? state.data.experiments.experiments : [];
  if (i === null || i === undefined || !rows[+i]) { tip.hidden = true; return; }
  tip.textContent = tooltip(rows[+i], +i + 1);
  tip.hidden = false;
  const x = Math.min(event.pageX + 14, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
  tip.style.left = x + "px";
  tip.style.top = (event.pageY + 14) + "px";
}

function wire() {
  $("chart").addEventListener("mousemove", showTip);
  $("chart").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  $("arena").addEventListener("change", (e) => { state.arena = e.target.value; state.topic = ""; refresh(true); });
  $("topic").addEventListener("change", (e) => { state.topic = e.target.value; refresh(true); });
  for (const b of document.querySelectorAll("[data-x]")) {
    b.addEventListener("click", () => {
      state.xAxis = b.dataset.x;
      for (const o of document.querySelectorAll("[data-x]")) o.classList.toggle("on", o === b);
      if (state.data.experiments) renderChart(state.data.experiments, state.data.status);
    });
  }
  for (const b of document.querySelectorAll("[data-colour]")) {
    b.addEventListener("click", () => {
      state.colourBy = b.dataset.colour;
      for (const o of document.querySelectorAll("[data-colour]")) o.classList.toggle("on", o === b);
      $("chart").setAttribute("class", "by-" + state.colourBy);
      if (state.data.experiments) renderLegend(state.data.experiments, state.data.status);
    });
  }
}

wire();
poll();
