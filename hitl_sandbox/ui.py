"""The sandbox's reviewer page, ``GET /sandbox/ui``: answer pending requests by hand.

One self-contained HTML page (inline CSS and JS, no external assets, no framework). It polls
``GET /sandbox/requests?status=pending`` (and ``claimed``) every 2 s and shows one card per
request: text, priority, loop, age, timeout and context (``ai_analysis``, ``metadata``, the
connector's source). Each card has the controls of its response type; answering posts
``{"response_data": value}`` to ``POST /sandbox/requests/{id}/respond``, which completes the
request and sends its webhooks like the auto-reviewer. Request data is only ever put into
the page with ``textContent``/attributes, never parsed as HTML. Test hooks: each card has
``data-request-id`` (and ``data-event-id`` when the connector sent one), each answer button
``data-value`` (the JSON of the value it sends).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse

# Inline script and style only; fetches go to this origin. Request images may come from
# anywhere (they are the content under review).
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data: http: https:; base-uri 'none'; form-action 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox reviewer</title>
<link rel="icon" href="data:,">
<style>
:root { color-scheme: light; --fg: #1d2330; --muted: #5d6678; --line: #dde1e8;
  --bg: #f4f6f9; --card: #fff; --accent: #2356c7; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { position: sticky; top: 0; z-index: 1; display: flex; gap: 1rem; align-items: baseline;
  padding: .8rem 1.5rem; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 1.15rem; font-weight: 600; }
header .meta { color: #b9c1d0; font-size: .85rem; }
main { max-width: 980px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
#flash { min-height: 1.4rem; margin: 0 0 .5rem; color: #17683a; font-weight: 500; }
#flash.error { color: #b3261e; }
#empty { padding: 3rem 1rem; text-align: center; color: var(--muted);
  border: 2px dashed var(--line); border-radius: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 1rem 1.2rem; margin: 0 0 1rem; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.card.answered { border-color: #9fd4b3; background: #f1fbf4; }
.head { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center;
  font-size: .82rem; color: var(--muted); }
.badge { display: inline-block; padding: .1rem .55rem; border-radius: 99px; font-weight: 600;
  font-size: .75rem; text-transform: uppercase; letter-spacing: .03em; }
.p-critical { background: #b3261e; color: #fff; }
.p-high { background: #f5a524; color: #3b2600; }
.p-medium { background: #dbe6fb; color: #1c3f8c; }
.p-low { background: #e7e9ee; color: #454c5a; }
.s-status { background: #eef0f4; color: #454c5a; }
.s-status.s-claimed { background: #efe3fb; color: #5b2a86; }
.id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.text { margin: .6rem 0; font-size: 1.02rem; white-space: pre-wrap; overflow-wrap: anywhere; }
.card img { max-width: 100%; max-height: 320px; border-radius: 6px; display: block;
  margin: .4rem 0; }
details { margin: .4rem 0 .8rem; }
summary { cursor: pointer; color: var(--muted); font-size: .85rem; }
.ctx { display: grid; grid-template-columns: minmax(8rem, max-content) 1fr; gap: .15rem .9rem;
  margin: .4rem 0 0; font-size: .85rem; }
.ctx dt { color: var(--muted); font-family: ui-monospace, Menlo, monospace; }
.ctx dd { margin: 0; overflow-wrap: anywhere; }
.ctx .section { grid-column: 1 / -1; margin-top: .35rem; font-weight: 600; color: var(--fg); }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
button { font: inherit; padding: .42rem 1rem; border-radius: 7px; cursor: pointer;
  border: 1px solid var(--accent); background: var(--accent); color: #fff; }
button.secondary { background: #fff; color: var(--accent); }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, input:focus-visible, textarea:focus-visible {
  outline: 3px solid #f5a524; outline-offset: 2px; }
input[type=number] { width: 8rem; }
input, textarea { font: inherit; padding: .35rem .5rem; border: 1px solid #b8bfcc;
  border-radius: 6px; }
textarea { width: 100%; min-height: 4.5rem; }
.hint { color: var(--muted); font-size: .8rem; }
.msg { margin-top: .5rem; font-size: .88rem; }
.msg.error { color: #b3261e; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
</style>
</head>
<body>
<header>
  <h1>Sandbox reviewer</h1>
  <span class="meta" id="summary">loading…</span>
</header>
<main>
  <p id="flash" role="status" aria-live="polite"></p>
  <div id="empty" hidden>No pending requests. New ones appear here within 2 seconds.</div>
  <section id="list" aria-label="Pending requests"></section>
</main>
<script>
"use strict";
(() => {
  const POLL_MS = 2000;
  const MAX_CARDS = 200;
  const RANK = { critical: 0, high: 1, medium: 2, low: 3 };
  const list = document.getElementById("list");
  const empty = document.getElementById("empty");
  const summary = document.getElementById("summary");
  const flash = document.getElementById("flash");
  const cards = new Map();   // request id -> {el, record}
  const done = new Set();    // answered here: never shown again

  // The only way request data reaches the DOM: text nodes and attributes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "cls") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function span(s) {
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d";
  }

  function age(r) {
    const since = Math.max(0, Math.round((Date.now() - Date.parse(r.created_at)) / 1000));
    const left = Math.round((Date.parse(r.timeout_at) - Date.now()) / 1000);
    return "age " + span(since) + ", " + (left > 0 ? "times out in " + span(left) : "timing out");
  }

  function show(v) {
    if (v === null || v === undefined) return "—";
    if (Array.isArray(v)) return v.map(show).join(", ");
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  // Flatten nested objects to dotted keys: {a: {b: 1}} -> [["a.b", "1"]].
  function flat(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length)
        flat(v, key, out);
      else out.push([key, show(v)]);
    }
    return out;
  }

  const SECTIONS = [["ai_analysis", "AI analysis"], ["metadata", "Metadata"],
                    ["connector", "Source"]];

  function contextBlock(ctx) {
    const dl = el("dl", { cls: "ctx" });
    const seen = new Set();
    const add = (title, value) => {
      dl.append(el("dt", { cls: "section", text: title }));
      const rows = value && typeof value === "object" && !Array.isArray(value)
        ? flat(value, "", []) : [["value", show(value)]];
      for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
    };
    for (const [key, title] of SECTIONS)
      if (key in ctx) { add(title, ctx[key]); seen.add(key); }
    for (const [key, value] of Object.entries(ctx)) if (!seen.has(key)) add(key, value);
    return dl;
  }

  function options(cfg) {
    return (cfg.options || []).map(o => typeof o === "string"
      ? { value: o, label: o } : { value: o.value, label: o.label });
  }

  function bounds(type, cfg) {
    const rich = type === "rating" ? ["scale_min", "scale_max"] : ["min_value", "max_value"];
    if (rich[0] in cfg || rich[1] in cfg) return [cfg[rich[0]] ?? 0, cfg[rich[1]]];
    return [cfg.min, cfg.max];
  }

  function answerButton(r, label, value, secondary) {
    return el("button", {
      type: "button", cls: secondary ? "secondary" : "", text: label,
      "data-value": JSON.stringify(value),
      "aria-label": label + " — request " + r.id,
      onclick: () => answer(r, value, label),
    });
  }

  function controls(r) {
    const cfg = r.response_config || {};
    const box = el("div", { cls: "actions", role: "group", "aria-label": "Answer" });
    const t = r.response_type;
    if (t === "single_select") {
      options(cfg).forEach((o, i) => box.append(answerButton(r, o.label, o.value, i > 0)));
    } else if (t === "boolean") {
      box.append(answerButton(r, cfg.true_label || "Yes", true, false),
                 answerButton(r, cfg.false_label || "No", false, true));
    } else if (t === "multi_select") {
      const checks = options(cfg).map(o => {
        const input = el("input", { type: "checkbox", value: o.value });
        return [input, el("label", {}, input, document.createTextNode(" " + o.label))];
      });
      for (const [, label] of checks) box.append(label);
      box.append(el("button", {
        type: "button", text: "Submit", "aria-label": "Submit selection — request " + r.id,
        onclick: () => {
          const picked = checks.filter(([i]) => i.checked).map(([i]) => i.value);
          answer(r, picked, picked.join(", ") || "nothing");
        },
      }));
    } else if (t === "rating" || t === "number") {
      const [lo, hi] = bounds(t, cfg);
      const places = Number(cfg.decimal_places || 0);
      const step = t === "rating" ? (cfg.scale_step || 1) : (places ? 10 ** -places : 1);
      const input = el("input", { type: "number", min: lo, max: hi, step: step, value: lo,
                                  "aria-label": t + " for request " + r.id });
      box.append(input, el("span", { cls: "hint", text: lo + " – " + hi }));
      const labels = cfg.labels || {};
      if (Object.keys(labels).length)
        box.append(el("span", { cls: "hint", text: Object.entries(labels)
          .map(([k, v]) => k + " = " + v).join(", ") }));
      box.append(el("button", {
        type: "button", text: "Submit", "aria-label": "Submit " + t + " — request " + r.id,
        onclick: () => answer(r, Number(input.value), input.value),
      }));
    } else {
      const area = el("textarea", { "aria-label": "Answer text for request " + r.id,
                                    maxlength: cfg.max_length, minlength: cfg.min_length });
      box.append(area, el("button", {
        type: "button", text: "Submit", "aria-label": "Submit text — request " + r.id,
        onclick: () => answer(r, area.value, "text"),
      }));
    }
    return box;
  }

  function card(r) {
    const ctx = r.context || {};
    const eventId = ctx.connector && ctx.connector.event_id;
    const title = eventId ? "event " + eventId : "request";
    const node = el("article", {
      cls: "card", "data-request-id": r.id, "data-event-id": eventId,
      "aria-label": "Request " + r.id + " (" + r.priority + " priority)",
    });
    const head = el("div", { cls: "head" },
      el("span", { cls: "badge p-" + r.priority, text: r.priority }),
      el("span", { cls: "badge s-status", text: r.status }),
      el("strong", { text: title }),
      el("span", { cls: "id", text: r.id }),
      el("span", { text: "loop " + r.loop_id }),
      el("span", { cls: "age" }),
      el("span", { text: r.response_type + (r.default_response !== undefined
        ? ", default " + show(r.default_response) : "") }));
    node.append(head, el("div", { cls: "text", text: r.request_text }));
    if (r.image_url && /^https?:\\/\\//.test(r.image_url))
      node.append(el("img", { src: r.image_url, alt: "Image under review",
                              referrerpolicy: "no-referrer", loading: "lazy" }));
    if (Object.keys(ctx).length) {
      const det = el("details", { open: true }, el("summary", { text: "Context" }),
                     contextBlock(ctx));
      node.append(det);
    }
    node.append(controls(r), el("div", { cls: "msg", role: "alert" }));
    return node;
  }

  function refresh(entry) {
    const r = entry.record;
    entry.el.querySelector(".age").textContent = age(r);
    const status = entry.el.querySelector(".s-status");
    status.textContent = r.status;
    status.classList.toggle("s-claimed", r.status === "claimed");
  }

  function say(text, isError) {
    flash.textContent = text;
    flash.classList.toggle("error", !!isError);
  }

  async function answer(r, value, label) {
    const entry = cards.get(r.id);
    if (!entry) return;
    const msg = entry.el.querySelector(".msg");
    entry.el.querySelectorAll("button, input, textarea").forEach(b => { b.disabled = true; });
    msg.className = "msg";
    msg.textContent = "Sending…";
    let res, body = {};
    try {
      res = await fetch("/sandbox/requests/" + encodeURIComponent(r.id) + "/respond", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ response_data: value }),
      });
      body = await res.json().catch(() => ({}));
    } catch (err) {
      res = { ok: false, status: 0 };
      body = { msg: String(err) };
    }
    if (res.ok || res.status === 409 || res.status === 404) {
      done.add(r.id);
      entry.el.classList.add("answered");
      const status = entry.el.querySelector(".s-status");
      status.textContent = res.ok ? "completed" : "closed";
      msg.textContent = res.ok ? "Answered: " + label : "Already closed: " + (body.msg || "");
      const name = entry.el.dataset.eventId ? "event " + entry.el.dataset.eventId : r.id;
      say(res.ok ? "Answered " + name + " with " + label + "."
                 : "Request " + r.id + " was already closed.");
      setTimeout(() => { entry.el.remove(); cards.delete(r.id); render(); }, 1200);
      return;
    }
    msg.className = "msg error";
    msg.textContent = "Not accepted (" + res.status + "): " + (body.msg || "unknown error");
    entry.el.querySelectorAll("button, input, textarea").forEach(b => { b.disabled = false; });
  }

  function render(total) {
    empty.hidden = cards.size > 0;
    if (total !== undefined)
      summary.textContent = total + " open" + (total > MAX_CARDS
        ? " (showing " + MAX_CARDS + ")" : "") + " · refreshed " +
        new Date().toLocaleTimeString();
  }

  async function fetchStatus(status) {
    const res = await fetch("/sandbox/requests?status=" + status, { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    return (await res.json()).requests || [];
  }

  async function poll() {
    try {
      const records = (await Promise.all(["pending", "claimed"].map(fetchStatus))).flat();
      records.sort((a, b) => (RANK[a.priority] ?? 9) - (RANK[b.priority] ?? 9)
        || Date.parse(a.created_at) - Date.parse(b.created_at));
      const shown = records.filter(r => !done.has(r.id)).slice(0, MAX_CARDS);
      const ids = new Set(shown.map(r => r.id));
      for (const [id, entry] of cards)
        if (!ids.has(id) && !done.has(id)) { entry.el.remove(); cards.delete(id); }
      let before = null;
      for (const r of shown.slice().reverse()) {   // keep order without re-creating cards
        let entry = cards.get(r.id);
        if (!entry) { entry = { el: card(r), record: r }; cards.set(r.id, entry); }
        entry.record = r;
        refresh(entry);
        if (entry.el.nextSibling !== before || entry.el.parentNode !== list)
          list.insertBefore(entry.el, before);
        before = entry.el;
      }
      render(records.length);
      if (flash.classList.contains("error")) say("");
    } catch (err) {
      say("Could not load requests: " + err.message, true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
</script>
</body>
</html>
"""


async def ui_page(request: Request) -> HTMLResponse:
    """``GET /sandbox/ui``: the reviewer page."""
    headers = {
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(PAGE, headers=headers)
