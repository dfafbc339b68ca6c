// gpt-study's page: plain JavaScript over the JSON API under /api/ (see docs/serve.md).
// No framework and nothing from a CDN, so it works offline and reads top to bottom:
// helpers, then one section per view (write, read, compare, runs), then the token inspector.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],
  limits: {},
  inspect: null, // {model, ids, tokens, position}: what the inspector looks at
  abort: null, // AbortController of the running generation
};

// ---------- helpers ----------

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({error: `HTTP ${res.status}`}));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function status(id, message, isError = false) {
  const node = $(id);
  node.textContent = message || "";
  node.classList.toggle("error", isError);
}

const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const pct = (p) => (p === null || p === undefined ? "–" : (100 * p).toPrecision(3) + "%");

// Probability -> colour on a log scale: red at 1e-4 and below, green at 1.
function probColour(p) {
  if (p === null || p === undefined) return "#eef0f3";
  const t = Math.max(0, Math.min(1, (Math.log10(Math.max(p, 1e-12)) + 4) / 4));
  return `hsl(${Math.round(120 * t)}, 70%, ${Math.round(82 + 6 * t)}%)`;
}

function currentModel() {
  return Number($("model").value || 0);
}

// One span per token; specials as small badges; pieces keep their spaces.
function tokenSpan(t, i) {
  const special = t.text === "<sot>" || t.text === "<eot>";
  const span = el("span", {class: special ? "tok special" : "tok", "data-i": String(i)});
  span.textContent = special ? t.text : t.text || "\u200b";
  return span;
}

function renderTokens(container, tokens, colour, onClick) {
  container.replaceChildren();
  tokens.forEach((t, i) => {
    const span = tokenSpan(t, i);
    span.style.background = colour(t);
    if (t.p !== undefined) {
      span.title = `${JSON.stringify(t.token)} · p ${pct(t.p)} · ${fmt(t.nll)} nats`;
    }
    if (onClick) span.addEventListener("click", () => onClick(i, span));
    container.append(span);
  });
}

function renderSummary(node, s, extra = "") {
  node.textContent =
    `${s.targets} tokens scored · NLL ${fmt(s.nll)} nats/token · perplexity ${fmt(s.ppl, 1)}` +
    (s.bytes === null
      ? " · bits/byte: send the text (this tokenizer's ids do not spell its bytes exactly)"
      : ` · ${fmt(s.bits_per_byte)} bits/byte over ${s.bytes} bytes`) + extra;
}

// ---------- models ----------

async function loadModels() {
  const data = await api("/api/models");
  state.models = data.models;
  state.limits = data.limits;
  for (const id of ["model", "model-a", "model-b"]) {
    const select = $(id);
    select.replaceChildren(
      ...data.models.map((m) => el("option", {value: String(m.index), text: m.name})));
  }
  if (data.models.length > 1) $("model-b").value = "1";
  if (!data.models.length) {
    status("write-status", "no checkpoint is served: start with gpt-study serve --checkpoint", true);
  }
  showModel();
}

function showModel() {
  const m = state.models[currentModel()];
  if (!m) return;
  const params = m.params >= 1e6 ? (m.params / 1e6).toFixed(1) + "M" : m.params.toLocaleString();
  $("model-info").textContent =
    `${params} parameters · ${m.layers} layers × ${m.heads} heads · ${m.tokenizer} ` +
    `${m.vocab_size} · window ${m.context_size}` + (m.step ? ` · step ${m.step}` : "");
  const s = m.sample;
  $("greedy").checked = s.greedy;
  for (const k of ["temperature", "top_k", "top_p", "repetition_penalty"]) $(k).value = s[k];
  $("seed").value = s.seed === null ? "" : s.seed;
  $("max_new_tokens").value = Math.min(s.max_new_tokens, state.limits.max_new_tokens || 1e9);
}

// ---------- write ----------

function sampleSettings() {
  const out = {greedy: $("greedy").checked};
  for (const k of ["temperature", "top_p", "repetition_penalty"]) {
    if ($(k).value !== "") out[k] = Number($(k).value);
  }
  for (const k of ["top_k", "seed", "max_new_tokens"]) {
    if ($(k).value !== "") out[k] = parseInt($(k).value, 10);
  }
  return out;
}

async function write() {
  const model = currentModel();
  const story = $("story");
  story.replaceChildren();
  $("write-summary").textContent = "";
  status("write-status", "writing…");
  $("write").disabled = true;
  $("stop").disabled = false;
  state.abort = new AbortController();
  let done = null;
  try {
    const res = await fetch("/api/generate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model, prompt: $("prompt").value, ...sampleSettings()}),
      signal: state.abort.signal,
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error(err.error || `HTTP ${res.status}`);
    }
    done = await readStream(res, story);
  } catch (e) {
    if (e.name !== "AbortError") status("write-status", e.message, true);
    else status("write-status", "stopped");
  } finally {
    $("write").disabled = false;
    $("stop").disabled = true;
    state.abort = null;
  }
  if (done) await colourStory(model, done);
}

// Reads the NDJSON stream, appending each token as it arrives; returns the "done" event.
async function readStream(res, story) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let done = null;
  let n = 0;
  for (;;) {
    const {value, done: end} = await reader.read();
    if (end) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const event = JSON.parse(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 1);
      if (event.type === "start") {
        event.prompt_pieces.forEach((text, i) =>
          story.append(tokenSpan({text}, i)));
        if (event.warnings.length) status("write-status", event.warnings.join("; "));
      } else if (event.type === "token") {
        story.append(tokenSpan({text: event.text}, story.childElementCount));
        status("write-status", `writing… ${++n} tokens`);
      } else if (event.type === "done") {
        done = event;
      } else if (event.type === "error") {
        throw new Error(event.message);
      }
    }
  }
  return done;
}

async function colourStory(model, done) {
  status("write-status",
    `${done.new_tokens} tokens in ${fmt(done.seconds, 2)} s (${fmt(done.tokens_per_s, 1)}/s)` +
    (done.finished ? ", ended with <eot>" : ", stopped at max tokens"));
  try {
    const scored = await api("/api/tokens", {model, ids: done.ids, top_k: 5});
    showScored($("story"), $("write-summary"), model, done.ids, scored);
  } catch (e) {
    status("write-status", e.message, true);
  }
}

function showScored(container, summary, model, ids, scored) {
  renderTokens(container, scored.tokens, (t) => probColour(t.p),
    (i, span) => inspect({model, ids, tokens: scored.tokens, position: i}, span));
  renderSummary(summary, scored.summary);
}

// ---------- read ----------

async function read() {
  const model = currentModel();
  status("read-status", "reading…");
  try {
    const scored = await api("/api/tokens", {model, text: $("read-text").value, top_k: 5});
    const ids = scored.tokens.map((t) => t.id);
    showScored($("read-tokens"), $("read-summary"), model, ids, scored);
    status("read-status", `${scored.tokens.length} tokens, ${scored.stories} ` +
      `stor${scored.stories === 1 ? "y" : "ies"} (each <sot> … <eot>, as training saw them)`);
  } catch (e) {
    status("read-status", e.message, true);
  }
}

// ---------- compare ----------

function diffColour(d) {
  if (d === null || d === undefined) return "#eef0f3";
  const t = Math.min(1, Math.abs(d) / 3); // 3 nats: full colour
  return d > 0 ? `rgba(37, 99, 235, ${0.08 + 0.6 * t})` : `rgba(234, 88, 12, ${0.08 + 0.6 * t})`;
}

async function compare() {
  const models = [Number($("model-a").value), Number($("model-b").value)];
  status("compare-status", "scoring with both models…");
  try {
    const out = await api("/api/compare", {models, text: $("compare-text").value});
    const rows = [["", "NLL nats/token", "perplexity", "bits/byte", "<eot> NLL"]];
    out.summary.forEach((s, k) => rows.push([
      `${"AB"[k]}: ${out.models[k]}`, fmt(s.nll), fmt(s.ppl, 1), fmt(s.bits_per_byte),
      out.eot ? fmt(out.eot.nll[k]) : "–"]));
    fillTable($("compare-summary"), rows);
    $("compare-legend").hidden = !out.tokens;
    const tokens = $("compare-tokens");
    if (!out.tokens) {
      tokens.textContent = "The two models split text differently: only bits per byte compare.";
    } else {
      renderTokens(tokens, out.tokens, (t) => diffColour(t.diff));
      tokens.querySelectorAll(".tok").forEach((span, i) => {
        const t = out.tokens[i];
        if (t.nll) span.title = `${JSON.stringify(t.token)} · A ${fmt(t.nll[0])} · ` +
          `B ${fmt(t.nll[1])} nats · B−A ${fmt(t.diff)}`;
      });
    }
    const eot = out.eot ? ` · on the ${out.eot.count} <eot> tokens B−A is ` +
      `${fmt(out.eot.diff)} nats` : "";
    status("compare-status", `bits per byte: A ${fmt(out.summary[0].bits_per_byte)}, ` +
      `B ${fmt(out.summary[1].bits_per_byte)}${eot}`);
  } catch (e) {
    status("compare-status", e.message, true);
  }
}

function fillTable(table, rows, header = true) {
  table.replaceChildren(...rows.map((row, r) => el("tr", {},
    ...row.map((cell) => el(r === 0 && header ? "th" : "td", {text: String(cell)})))));
}

// ---------- runs ----------

const RUN_COLOURS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#65a30d"];
const runCache = {};

async function loadRuns() {
  status("runs-status", "");
  try {
    const {runs} = await api("/api/runs");
    if (!runs.length) {
      status("runs-status", "no runs: start the server with --runs DIR (a save_root or its parent)");
      return;
    }
    const table = $("run-list");
    fillTable(table, [["plot", "run", "records", "last step", "last train loss", "best valid NLL"],
      ...runs.map((r) => r.problem ? ["", r.name, "–", r.problem, "", ""]
        : ["", r.name, r.records, r.last_step ?? "–", fmt(r.last_train_loss),
          fmt(r.best_valid_nll)])]);
    [...table.rows].slice(1).forEach((tr, k) => {
      if (runs[k].problem) return;  // a damaged run is listed with its problem, not plotted
      const box = el("input", {type: "checkbox", "data-run": runs[k].name});
      box.checked = true;
      box.addEventListener("change", showRuns);
      tr.cells[0].append(box);
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = RUN_COLOURS[k % RUN_COLOURS.length];
      tr.cells[1].prepend(swatch, " ");
    });
    await showRuns();
  } catch (e) {
    status("runs-status", e.message, true);
  }
}

// The checked runs: their curves on one chart, their settings side by side (differences bold).
async function showRuns() {
  const boxes = [...document.querySelectorAll("#run-list input[type=checkbox]")];
  const chosen = [];
  for (const [k, box] of boxes.entries()) {
    if (!box.checked) continue;
    const name = box.dataset.run;
    runCache[name] = runCache[name] || (await api(`/api/runs/${encodeURIComponent(name)}`));
    chosen.push({run: runCache[name], colour: RUN_COLOURS[k % RUN_COLOURS.length]});
  }
  $("run-title").textContent = chosen.length
    ? "train loss (line) and valid NLL (dots) by step" : "";
  const series = [];
  for (const {run, colour} of chosen) {
    const pick = (kind, key) => run.records
      .filter((r) => r.kind === kind && typeof r[key] === "number").map((r) => [r.step, r[key]]);
    series.push({colour, points: pick("train", "train_loss"), label: `${run.name} train`});
    series.push({colour, points: pick("valid", "valid_nll"), label: `${run.name} valid`, dots: true});
  }
  drawChart($("run-chart"), series);
  // Settings side by side; the ones that differ between the runs first, in bold.
  const flat = chosen.map(({run}) => flatSettings(run.settings));
  const all = [...new Set(flat.flatMap((f) => Object.keys(f)))];
  const differs = (k) => new Set(flat.map((f) => f[k])).size > 1;
  const keys = [...all.filter(differs), ...all.filter((k) => !differs(k))];
  fillTable($("run-settings"), [["setting", ...chosen.map(({run}) => run.name)],
    ...keys.map((k) => [k, ...flat.map((f) => (k in f ? f[k] : "–"))])]);
  [...$("run-settings").rows].slice(1).forEach((tr, i) => {
    if (differs(keys[i])) tr.classList.add("differs");
  });
}

function flatSettings(settings) {
  const out = {};
  for (const [section, values] of Object.entries(settings || {})) {
    if (typeof values !== "object" || values === null) out[section] = JSON.stringify(values);
    else for (const [k, v] of Object.entries(values)) out[`${section}.${k}`] = JSON.stringify(v);
  }
  return out;
}

function drawChart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 50, R = 180, T = 12, B = 34;
  ctx.clearRect(0, 0, W, H);
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = 0, x1 = Math.max(...xs, 1);
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#c9ced6";
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = y0 + ((y1 - y0) * k) / 4;
    ctx.beginPath(); ctx.moveTo(L, Y(y)); ctx.lineTo(W - R, Y(y)); ctx.stroke();
    ctx.fillText(y.toFixed(2), 6, Y(y) + 4);
    const x = x0 + ((x1 - x0) * k) / 4;
    ctx.fillText(String(Math.round(x)), X(x) - 10, H - 18);
  }
  ctx.fillText("step", (L + W - R) / 2 - 10, H - 4);
  series.forEach((s, k) => {
    if (!s.points.length) return;
    ctx.strokeStyle = ctx.fillStyle = s.colour;
    ctx.lineWidth = 2;
    if (s.dots) {
      s.points.forEach(([x, y]) => {
        ctx.beginPath(); ctx.arc(X(x), Y(y), 4, 0, 2 * Math.PI); ctx.fill();
      });
    } else {
      ctx.beginPath();
      s.points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
    }
    ctx.fillText((s.dots ? "● " : "— ") + s.label, W - R + 10, T + 14 + 16 * k);
  });
}

// ---------- inspector: alternatives, attention, logit lens ----------

async function inspect(target, span) {
  document.querySelectorAll(".tok.selected").forEach((s) => s.classList.remove("selected"));
  span.classList.add("selected");
  state.inspect = target;
  const t = target.tokens[target.position];
  $("inspector").hidden = false;
  $("insp-title").textContent = `token ${target.position}: ${JSON.stringify(t.token)}`;
  $("insp-prob").textContent = t.p === null ? "the first token is context: nothing predicts it"
    : `the model gave it p ${pct(t.p)} (${fmt(t.nll)} nats)`;
  const alts = $("insp-alts");
  alts.replaceChildren(...(t.top || []).map((a) => {
    const bar = el("span", {class: "bar"});
    bar.style.width = `${Math.max(1, 100 * a.p)}%`;
    return el("tr", {class: a.id === t.id ? "hit" : ""},
      el("td", {text: JSON.stringify(a.token)}), el("td", {text: pct(a.p)}), el("td", {}, bar));
  }));
  await inspectAttention();
}

// The attention and lens of one query token: the token before the chosen one (whose output
// predicted it) or the chosen token itself (whose output predicts the next).
async function inspectAttention() {
  const target = state.inspect;
  if (!target) return;
  const before = document.querySelector("input[name=query]:checked").value === "before";
  const position = before && target.position > 0 ? target.position - 1 : target.position;
  $("attn-which").textContent = "(loading…)";
  try {
    const attn = await api("/api/attention",
      {model: target.model, ids: target.ids, position, top_k: 5});
    if (state.inspect !== target) return; // another token was clicked meanwhile
    renderAttention(attn);
    renderLens(attn);
  } catch (e) {
    $("attn-which").textContent = e.message;
  }
}

function renderAttention(attn) {
  const grid = $("attn-grid");
  const rows = [];
  for (let l = 0; l < attn.layers; l++) {
    rows.push({label: `L${l + 1} mean`, w: attn.mean[l], layer: l, head: null});
    for (let h = 0; h < attn.heads; h++) {
      rows.push({label: `L${l + 1} H${h + 1}`, w: attn.weights[l][h], layer: l, head: h});
    }
  }
  const head = el("tr", {}, el("th", {class: "label", text: ""}),
    ...attn.tokens.map((t) => el("th", {class: "col", title: t.token, text: t.text.trim() || "·"})));
  grid.classList.toggle("dense", attn.tokens.length > 40);
  const select = (row, tr) => {
    grid.querySelectorAll("tr.chosen").forEach((x) => x.classList.remove("chosen"));
    tr.classList.add("chosen");
    showAttentionText(attn, row);
  };
  const body = rows.map((row) => {
    const max = Math.max(...row.w, 1e-9);
    const tr = el("tr", {class: row.head === null ? "mean" : ""},
      el("th", {class: "label", text: row.label}),
      ...row.w.map((w, j) => {
        const td = el("td", {title: `${attn.tokens[j].token}: ${fmt(w, 4)}`});
        td.style.background = `rgba(37, 99, 235, ${w / max})`;
        return td;
      }));
    tr.addEventListener("click", () => select(row, tr));
    return tr;
  });
  grid.replaceChildren(head, ...body);
  const last = rows.findIndex((r) => r.layer === attn.layers - 1 && r.head === null);
  select(rows[last], body[last]);
}

function showAttentionText(attn, row) {
  const who = row.head === null ? `layer ${row.layer + 1}, mean of ${attn.heads} heads`
    : `layer ${row.layer + 1}, head ${row.head + 1}`;
  const from = JSON.stringify(attn.tokens[attn.tokens.length - 1].token);
  $("attn-which").textContent = `of token ${attn.position} ${from} (${who}; click a row)`;
  const max = Math.max(...row.w, 1e-9);
  const box = $("attn-text");
  box.replaceChildren();
  if (attn.window_start > 0) box.append(el("span", {class: "muted", text: "… "}));
  attn.tokens.forEach((t, j) => {
    const span = tokenSpan(t, attn.window_start + j);
    span.style.background = `rgba(37, 99, 235, ${(0.85 * row.w[j]) / max})`;
    span.title = `${fmt(row.w[j], 4)}`;
    if (j === attn.tokens.length - 1) span.classList.add("query");
    box.append(span);
  });
}

function renderLens(attn) {
  const rows = [el("tr", {}, el("th", {text: "layer"}),
    el("th", {text: attn.next ? `p(${JSON.stringify(attn.next.token)})` : "p(next)"}),
    ...[1, 2, 3, 4, 5].slice(0, attn.lens[0].top.length).map((k) => el("th", {text: `#${k}`})))];
  attn.lens.forEach((row) => {
    const name = row.layer === 0 ? "embeddings" : `layer ${row.layer}`;
    rows.push(el("tr", {}, el("th", {text: name}), el("td", {text: pct(row.p_next)}),
      ...row.top.map((a) => {
        const td = el("td", {class: attn.next && a.id === attn.next.id ? "hit" : "",
          title: `${a.token} ${pct(a.p)}`},
        el("div", {text: a.token}), el("div", {class: "p", text: pct(a.p)}));
        td.style.background = probColour(a.p);
        return td;
      })));
  });
  $("lens").replaceChildren(...rows);
}

// ---------- wiring ----------

function showView(name) {
  document.querySelectorAll("#tabs button").forEach((b) =>
    b.classList.toggle("active", b.dataset.view === name));
  document.querySelectorAll(".view").forEach((v) => (v.hidden = v.id !== `view-${name}`));
  $("inspector").hidden = true;
  if (name === "runs") loadRuns();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("#tabs button").forEach((b) =>
    b.addEventListener("click", () => showView(b.dataset.view)));
  $("model").addEventListener("change", showModel);
  $("write").addEventListener("click", write);
  $("stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("read").addEventListener("click", read);
  $("compare").addEventListener("click", compare);
  $("insp-close").addEventListener("click", () => ($("inspector").hidden = true));
  document.querySelectorAll("input[name=query]").forEach((r) =>
    r.addEventListener("change", inspectAttention));
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) write();
  });
  loadModels().catch((e) => status("write-status", e.message, true));
});
