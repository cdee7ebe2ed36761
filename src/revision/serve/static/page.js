// The demo page: upload or pick a photo, baseline and REVISION side by side, answer the
// question. Untrusted text (titles, cues, thinking, errors) only ever goes through
// textContent or attribute setters, never innerHTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";
const STAGES = ["query", "recall", "filter", "rank", "display", "interaction"];
let current = null; // { request_id, user_id }

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function headers() {
  const key = $("#apikey").value;
  return key ? { "X-API-Key": key } : {};
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    if (response.status === 401) $("#keybox").hidden = false;
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

async function status() {
  try {
    const r = await fetch("/readyz");
    const body = await r.json();
    if (body.status === "ready") {
      const t = body.threshold;
      $("#status").textContent =
        `ready · ${body.products} products · planner ${body.planner.version || "none"} · ` +
        `trigger below ${t.value.toFixed(3)} (${t.source}) · cap ${body.daily_cap}/day`;
      document.body.dataset.ready = "true";
      return true;
    }
    $("#status").textContent = `not ready: ${body.status}${body.error ? " — " + body.error : ""}`;
  } catch (e) {
    $("#status").textContent = "cannot reach the service";
  }
  setTimeout(status, 1000);
  return false;
}

async function loadSamples() {
  let samples = [];
  try { samples = await call("/v1/samples"); } catch (e) { return; }
  const box = $("#samples");
  for (const s of samples) {
    const button = el("button", { type: "button", title: s.title, "data-sample": s.id });
    const url = `/v1/samples/${encodeURIComponent(s.id)}/photo`;
    button.append(el("img", { src: url, alt: s.title }));
    button.addEventListener("click", async () => {
      const blob = await (await fetch(url)).blob();
      search(blob);
    });
    box.append(button);
  }
}

async function search(blob) {
  showError("");
  const form = new FormData();
  form.append("photo", blob, "photo.jpg");
  const user = $("#user").value || "demo-user";
  form.append("user_id", user);
  form.append("top_k", "8");
  document.body.dataset.state = "searching";
  try {
    const out = await call("/v1/search", { method: "POST", body: form });
    current = { request_id: out.request_id, user_id: user };
    $("#querythumb").src = URL.createObjectURL(blob);
    render(out);
    document.body.dataset.state = "done";
  } catch (e) {
    showError(e.message);
    document.body.dataset.state = "error";
  }
}

function card(hit, metadata) {
  const c = el("article", { class: "card", "data-product": hit.product_id });
  c.append(el("img", { src: `/v1/products/${encodeURIComponent(hit.product_id)}/image`, alt: hit.title, loading: "lazy" }));
  c.append(el("div", { class: "title" }, hit.title));
  if (hit.price !== null && hit.price !== undefined) c.append(el("div", { class: "price" }, hit.price.toFixed(4)));
  if (hit.source && hit.source !== "visual") c.append(el("span", { class: "source" }, hit.source));
  for (const b of hit.badges || []) c.append(el("span", { class: "badge on" }, b));
  const fields = metadata[hit.product_id];
  if (fields) {
    const dl = el("dl");
    for (const [k, v] of Object.entries(fields)) { dl.append(el("dt", {}, k), el("dd", {}, v)); }
    c.append(dl);
  }
  return c;
}

function fill(grid, hits, metadata = {}) {
  grid.replaceChildren(...hits.map((h) => card(h, metadata)));
}

function badge(text, kind = "") {
  return el("span", { class: `badge ${kind}` }, text);
}

function render(out) {
  const d = out.decision || {};
  $("#decision").hidden = false;
  const badges = [
    badge(`relevance ${out.relevance.toFixed(3)}`),
    badge(d.triggered ? "triggered" : d.capped ? "capped (daily limit)" : "not triggered", d.triggered ? "on" : ""),
  ];
  if (d.cache) badges.push(badge(`cache ${d.cache}`, d.cache === "hit" ? "hit" : ""));
  if (d.fallback) badges.push(badge(`fallback: ${d.fallback}`, "warn"));
  if (d.shown) badges.push(badge("tools shown", "on"));
  badges.push(badge(`${out.latency_ms.toFixed(0)} ms`));
  $("#badges").replaceChildren(...badges);
  fill($("#baseline .grid"), out.baseline.length ? out.baseline : out.results);
  renderRevision(out, false);
  renderPlan(out);
}

function renderRevision(out, refined, note = "") {
  const metadata = {};
  let summary = null, question = null;
  for (const cue of out.cues || []) {
    if (cue.type === "metadata") metadata[cue.product_id] = cue.fields;
    if (cue.type === "summary") summary = cue;
    if (cue.type === "question") question = cue;
  }
  const section = $("#revision");
  section.dataset.refined = refined ? "true" : "false";
  $("#revision-note").textContent = note || (out.applied && out.applied.length ? `tools ${out.applied.map((i) => `(${i})`).join(" ")}` : "same as the baseline");
  const summaryBox = $("#summary");
  summaryBox.hidden = !summary;
  if (summary) {
    summaryBox.replaceChildren(el("strong", {}, "Summary "), el("span", {}, summary.text));
  }
  const qbox = $("#question");
  qbox.hidden = !question || refined;
  if (question && !refined) {
    const buttons = question.options.map((option, i) => {
      const b = el("button", { type: "button", "data-option": option }, `${option} (${question.counts[i] ?? "?"})`);
      b.addEventListener("click", () => answer(option, question.attribute));
      return b;
    });
    qbox.replaceChildren(el("div", {}, question.text), ...buttons);
  }
  fill($("#revision .grid"), out.results, metadata);
}

async function answer(option, attribute) {
  if (!current) return;
  showError("");
  try {
    const out = await call("/v1/events", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request_id: current.request_id, user_id: current.user_id, kind: "question_answer", value: option }),
    });
    renderRevision(out.refined, true, `refined: ${attribute} = ${option}`);
  } catch (e) {
    showError(e.message);
  }
}

function renderPlan(out) {
  const d = out.decision || {};
  const box = $("#plan");
  box.hidden = !d.plan;
  if (!d.plan) return;
  const thinking = d.plan.replace(/^\s*<think>/, "").split("</think>")[0];
  $("#thinking").textContent = thinking.trim() || "(none)";
  const nodes = (out.dag && out.dag.nodes) || [];
  $("#tools").textContent = nodes.length ? nodes.map((n) => `(${n.index}) ${n.title}`).join(" → ") : "no tool";
  drawDag(out.dag);
  const rows = (out.trace || []).map((t) => {
    const tr = el("tr");
    const name = t.type === "tool" ? `(${t.index}) ${t.name}` : t.name;
    tr.append(el("td", {}, name), el("td", {}, t.stage || ""), el("td", {}, t.status), el("td", {}, (t.ms || 0).toFixed(1)), el("td", {}, t.error || t.detail || ""));
    return tr;
  });
  $("#trace tbody").replaceChildren(...rows);
}

function drawDag(dag) {
  const svg = $("#dag");
  svg.replaceChildren();
  if (!dag || !dag.nodes.length) return;
  const width = svg.clientWidth || 800, col = width / STAGES.length;
  const pos = {}, perStage = {};
  STAGES.forEach((s, i) => {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", i * col + 8); t.setAttribute("y", 16); t.setAttribute("fill", "#999");
    t.textContent = s;
    svg.append(t);
  });
  for (const n of dag.nodes) {
    const i = Math.max(0, STAGES.indexOf(n.stage));
    const k = (perStage[i] = (perStage[i] || 0) + 1);
    pos[n.index] = { x: i * col + 8, y: 20 + k * 40 };
  }
  for (const e of dag.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", a.x + col - 20); line.setAttribute("y1", a.y + 12);
    line.setAttribute("x2", b.x); line.setAttribute("y2", b.y + 12);
    line.setAttribute("stroke", "#c44");
    svg.append(line);
  }
  for (const n of dag.nodes) {
    const p = pos[n.index];
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", p.x); r.setAttribute("y", p.y); r.setAttribute("rx", 4);
    r.setAttribute("width", col - 20); r.setAttribute("height", 24);
    r.setAttribute("fill", "#fff7e6"); r.setAttribute("stroke", "#f0a");
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", p.x + 6); t.setAttribute("y", p.y + 16);
    t.textContent = `(${n.index}) ${n.component}`;
    svg.append(r, t);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("#photo").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) search(file);
  });
  status();
  loadSamples();
});
