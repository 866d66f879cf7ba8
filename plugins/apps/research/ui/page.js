// The Research tab: ask a question, watch the plan grow as a graph (question -> sub-questions -> answer), each node's
// status live, its searcher's steps and cited passages one click (or Enter) away, then the answer and its references.
// Everything shown is text (textContent / SVG text nodes): a passage from a fetched page cannot become markup.
import { download, events } from "/ui/api.js";
import { clear, h, message } from "/ui/dom.js";

// replaceChildren would write a null child as the text "null": skip the absent ones.
const put = (el, ...children) => clear(el).append(...children.filter((c) => c !== null && c !== undefined && c !== false));

const SVG = "http://www.w3.org/2000/svg";
const W = 210, H = 58, GAP_X = 50, GAP_Y = 18, PAD = 12;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// Two lines of at most ~30 characters, cut at a word; the whole text rides in the node's <title>.
function lines(text, width = 30) {
  const words = String(text).split(/\s+/).filter(Boolean);
  const out = [""];
  for (const w of words) {
    const cur = out[out.length - 1];
    if ((cur + " " + w).trim().length <= width) out[out.length - 1] = (cur + " " + w).trim();
    else if (out.length < 2) out.push(w.slice(0, width));
    else { out[1] = out[1].slice(0, width - 1) + "…"; break; }
  }
  return out;
}

function ensureStyle() {
  if (document.querySelector("link[data-app-style=research]")) return;
  document.head.append(h("link", { rel: "stylesheet", href: "/ui/apps/research/page.css", dataset: { appStyle: "research" } }));
}

export function page(root, config) {
  ensureStyle();
  const state = { controller: null, runId: null, nodes: new Map(), order: [], final: null, selected: null };
  const question = h("textarea", { id: "research-question", rows: "2", placeholder: "A question that needs several lookups", "aria-label": "research question" });
  const maxNodes = h("input", { id: "research-max-nodes", type: "number", min: "1", max: "8", value: "4", inputmode: "numeric" });
  const parallel = h("input", { id: "research-parallel", type: "number", min: "1", max: "4", value: "1", inputmode: "numeric" });
  const protocol = h("select", { id: "research-protocol" },
    config.protocols.map((p) => h("option", { value: p, selected: p === "react" }, p)));
  const start = h("button", { type: "submit", class: "primary", id: "research-start" }, "Research");
  const stop = h("button", { type: "button", id: "research-stop", disabled: true, onclick: () => state.controller?.abort() }, "Stop");
  const status = h("p", { class: "run-status", id: "research-status", role: "status" }, `Model: ${config.model}. Enter starts, Esc stops.`);
  const svg = s("svg", { class: "research-graph", role: "group", "aria-label": "research plan" });
  const detail = h("section", { class: "research-detail", id: "research-detail", "aria-live": "polite" });
  const answer = h("section", { class: "research-answer", id: "research-answer" });
  const footer = h("div", { class: "run-footer" });
  const form = h("form", { class: "composer research-form", onsubmit: (e) => { e.preventDefault(); run(); } },
    question, h("label", { class: "field" }, "Sub-questions ", maxNodes), h("label", { class: "field" }, "Parallel ", parallel),
    h("label", { class: "field" }, "Searchers ", protocol), start, stop);
  question.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); run(); } });
  root.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.controller) state.controller.abort(); });
  root.append(h("div", { class: "research" }, form, status, h("div", { class: "graph-wrap" }, svg), detail, answer, footer));
  question.focus();

  function node(id) {
    if (!state.nodes.has(id)) {
      state.nodes.set(id, { id, question: id, depends: [], depth: 1, status: "planned", steps: [], answer: "", references: [], error: "" });
      state.order.push(id);
    }
    return state.nodes.get(id);
  }

  function layout() {
    const columns = new Map();
    for (const id of state.order) {
      const n = state.nodes.get(id);
      if (!columns.has(n.depth)) columns.set(n.depth, []);
      columns.get(n.depth).push(n);
    }
    const depthMax = Math.max(0, ...columns.keys());
    const rows = Math.max(1, ...[...columns.values()].map((c) => c.length));
    const pos = new Map();
    const y = (i, count) => PAD + (rows - count) * (H + GAP_Y) / 2 + i * (H + GAP_Y);
    pos.set("__question", { x: PAD, y: y(0, 1) });
    for (const [depth, col] of columns) col.forEach((n, i) => pos.set(n.id, { x: PAD + depth * (W + GAP_X), y: y(i, col.length) }));
    pos.set("__answer", { x: PAD + (depthMax + 1) * (W + GAP_X), y: y(0, 1) });
    return { pos, width: PAD * 2 + (depthMax + 2) * (W + GAP_X) - GAP_X, height: PAD * 2 + rows * (H + GAP_Y) - GAP_Y };
  }

  function box(key, label, text, cls, onOpen) {
    const g = s("g", { class: `node ${cls}` });
    g.dataset.nodeId = key;
    const [a, b] = lines(text);
    g.append(s("title", {}, text), s("rect", { width: W, height: H, rx: 8 }),
      s("text", { x: 10, y: 18, class: "node-label" }, label),
      s("text", { x: 10, y: 36 }, a), s("text", { x: 10, y: 51 }, b || ""));
    if (onOpen) {
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.setAttribute("aria-label", `${label}: ${text}`);
      g.addEventListener("click", onOpen);
      g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onOpen(); } });
    }
    return g;
  }

  function draw() {
    const { pos, width, height } = layout();
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const edges = s("g", { class: "edges" });
    const nodes = s("g", { class: "nodes" });
    const edge = (from, to, cls = "") => {
      const a = pos.get(from), b = pos.get(to);
      if (!a || !b) return;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      const path = s("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: `edge ${cls}` });
      path.dataset.from = from;
      path.dataset.to = to;
      edges.append(path);
    };
    const leaves = new Set(state.order);
    for (const n of state.nodes.values()) {
      if (n.depends.length) n.depends.forEach((d) => { edge(d, n.id); leaves.delete(d); });
      else edge("__question", n.id);
    }
    if (state.final) for (const id of leaves) edge(id, "__answer");
    const q = state.question || "";
    const root = box("__question", "question", q, "question", null);
    root.setAttribute("transform", `translate(${pos.get("__question").x},${pos.get("__question").y})`);
    nodes.append(root);
    for (const n of state.nodes.values()) {
      const g = box(n.id, `${n.id} · ${n.status}`, n.question, n.status, () => select(n.id));
      const p = pos.get(n.id);
      g.setAttribute("transform", `translate(${p.x},${p.y})`);
      g.dataset.status = n.status;
      if (state.selected === n.id) g.classList.add("selected");
      nodes.append(g);
    }
    if (state.final) {
      const g = box("__answer", `answer · ${state.final.status}`, state.final.answer || state.final.error || "", `answer ${state.final.status}`, () => answer.scrollIntoView({ block: "start" }));
      const p = pos.get("__answer");
      g.setAttribute("transform", `translate(${p.x},${p.y})`);
      nodes.append(g);
    }
    put(svg, edges, nodes);
  }

  function references(list) {
    return h("ol", { class: "references" }, list.map((r) => h("li", { value: String(r.number), dataset: { ref: String(r.number) } },
      h("span", { class: "ref-title" }, r.title || r.url), " ", h("code", { class: "ref-url" }, r.url),
      h("blockquote", {}, r.passage))));
  }

  function select(id) {
    state.selected = id;
    const n = state.nodes.get(id);
    put(detail, h("h3", {}, `${n.id}: ${n.question}`),
      h("p", { class: "muted" }, `status: ${n.status}` + (n.depends.length ? ` · after ${n.depends.join(", ")}` : "")),
      n.steps.length ? h("ol", { class: "searcher-steps" }, n.steps.map((st) => h("li", { class: st.kind }, h("span", { class: "label" }, st.kind), h("pre", {}, st.text)))) : null,
      n.answer ? h("div", { class: "final-answer" }, h("div", { class: "label" }, "answer"), h("pre", {}, n.answer)) : null,
      n.error ? message("error", n.error) : null,
      n.references.length ? references(n.references) : null);
    draw();
  }

  function apply(e) {
    if (e.type === "research_started") { state.question = e.question; }
    else if (e.type === "node_added") { const n = node(e.node_id); n.question = e.question; n.depends = e.depends_on || []; n.depth = e.depth || 1; }
    else if (e.type === "node_started") node(e.node_id).status = "running";
    else if (e.type === "searcher_step") node(e.node_id).steps.push({ kind: e.kind, text: e.text });
    else if (e.type === "node_answered") { const n = node(e.node_id); n.status = "answered"; n.answer = e.answer; n.references = e.references || []; }
    else if (e.type === "node_failed") { const n = node(e.node_id); n.status = "failed"; n.error = e.error; }
    else if (e.type === "plan_rejected" || e.type === "planner_note" || e.type === "citation_flagged") {
      const text = e.type === "plan_rejected" ? `plan refused (${e.kind}): ${e.message}` : e.type === "planner_note" ? `planner: ${e.text}` : `citation [${e.number}] in ${e.where} removed: ${e.reason}`;
      status.textContent = text;
    } else if (e.type === "final") { state.final = e; showAnswer(e); }
    else if (e.type === "error") answer.append(message("error", e.message));
    if (state.selected && e.node_id === state.selected) select(state.selected);
    else draw();
  }

  function showAnswer(e) {
    put(answer, h("h3", {}, e.status === "answered" ? "Answer" : `Ended: ${e.status.replace("_", " ")}`),
      h("pre", { class: "answer-text" }, e.answer || e.error || ""),
      e.references?.length ? h("div", {}, h("h4", {}, "References"), references(e.references)) : null);
  }

  async function run() {
    const text = question.value.trim();
    if (!text || state.controller) return;
    Object.assign(state, { runId: null, nodes: new Map(), order: [], final: null, selected: null, question: text });
    clear(detail);
    clear(answer);
    clear(footer);
    draw();
    state.controller = new AbortController();
    start.disabled = protocol.disabled = true;
    stop.disabled = false;
    status.textContent = "planning…";
    const body = { question: text, max_nodes: Number(maxNodes.value) || 4, max_parallel: Number(parallel.value) || 1, protocol: protocol.value };
    let ended = "cancelled";
    try {
      for await (const e of events("/v1/research", body, state.controller.signal)) {
        if (e.type === "run") state.runId = e.run_id;
        else apply(e);
        if (e.type === "final") ended = e.status;
        if (e.type === "error") ended = "error";
      }
    } catch (err) {
      if (err.name !== "AbortError") { answer.append(message("error", err.message)); ended = "error"; }
    } finally {
      state.controller = null;
      start.disabled = protocol.disabled = false;
      stop.disabled = true;
    }
    root.dataset.status = ended;
    status.textContent = ended === "cancelled" ? "stopped: the run was cancelled" : `ended: ${ended.replace("_", " ")}`;
    if (ended !== "cancelled" && state.runId) {
      const id = state.runId;
      footer.append(h("button", { type: "button", class: "download", onclick: () => download(`/v1/research/runs/${encodeURIComponent(id)}/trace`, `${id}.jsonl`).catch((err) => footer.append(message("error", err.message))) }, "Download trace (JSONL)"));
    }
    question.focus();
  }
}
