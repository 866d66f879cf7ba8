// The Assistant tab: retrieval testing for the knowledge assistant. Type a chat message and see whether its topic is
// in the knowledge base (every hit's score against the rejection threshold, no model call), or run the whole pipeline
// as a dry run and see each stage's verdict and reason, the answer and the passages it cites. Text only, never HTML.
import { api } from "/ui/api.js";
import { clear, h, message } from "/ui/dom.js";

function ensureStyle() {
  if (document.querySelector("link[data-app-style=assistant]")) return;
  document.head.append(h("link", { rel: "stylesheet", href: "/ui/apps/assistant/page.css", dataset: { appStyle: "assistant" } }));
}

// replaceChildren would write a null child as the text "null": skip the absent ones.
const put = (el, ...children) => clear(el).append(...children.filter((c) => c !== null && c !== undefined && c !== false));

const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "–");

export function page(root) {
  ensureStyle();
  const query = h("textarea", { id: "assistant-query", rows: "2", placeholder: "A chat message, e.g. how do I retry a request?", "aria-label": "chat message to test" });
  const topK = h("input", { id: "assistant-top-k", type: "number", min: "1", max: "20", value: "5", inputmode: "numeric" });
  const test = h("button", { type: "submit", class: "primary", id: "assistant-retrieve" }, "Test retrieval");
  const decide = h("button", { type: "button", id: "assistant-decide", onclick: () => runDecision() }, "Full decision (dry run)");
  const out = h("section", { id: "assistant-result", "aria-live": "polite" });
  const form = h("form", { class: "composer assistant-form", onsubmit: (e) => { e.preventDefault(); runRetrieval(); } },
    query, h("label", { class: "field" }, "Top k ", topK), test, decide);
  query.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); runRetrieval(); } });
  root.append(h("div", { class: "assistant" },
    h("p", { class: "hint" }, "Is this message's topic in the knowledge base? Enter tests retrieval (no model call); the dry run asks the model too, and keeps no history."),
    form, out));
  query.focus();

  async function busy(work) {
    test.disabled = decide.disabled = true;
    put(out, h("p", { class: "run-status", role: "status" }, "working…"));
    try {
      await work();
    } catch (err) {
      put(out, message("error", err.message));
    } finally {
      test.disabled = decide.disabled = false;
    }
  }

  const pct = (x) => `${Math.round((x ?? 0) * 100)}%`;

  function hitsTable(rows, threshold) {
    return h("div", { class: "table-wrap" }, h("table", { class: "hits" },
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "score"), h("th", {}, threshold === null ? "cited" : `vs ${fmt(threshold)}`), h("th", {}, "source"), h("th", {}, "passage"))),
      h("tbody", {}, rows.map((r) => h("tr", { class: r.accepted ? "accepted" : "rejected", dataset: { source: r.source } },
        h("td", {}, String(r.rank ?? r.number)), h("td", { class: "score" }, fmt(r.score)),
        h("td", { class: "verdict" }, r.accepted === undefined ? "" : threshold === null ? "cited" : r.accepted ? "in" : "below"),
        h("td", {}, h("code", {}, r.source)), h("td", {}, h("details", {}, h("summary", {}, r.text.slice(0, 90) + (r.text.length > 90 ? "…" : "")), h("pre", {}, r.text))))))));
  }

  function runRetrieval() {
    const text = query.value.trim();
    if (!text) return;
    return busy(async () => {
      const r = await api("/v1/assistant/retrieve", { method: "POST", body: { query: text, top_k: Number(topK.value) || 5 } });
      out.dataset.verdict = r.in_knowledge_base ? "in" : "out";
      put(out, 
        h("p", { class: `verdict-line ${r.in_knowledge_base ? "in" : "out"}`, id: "assistant-verdict" },
          r.in_knowledge_base ? `In the knowledge base: ${r.hits.filter((x) => x.accepted).length} passage(s) at or above the threshold ${fmt(r.threshold)}, holding ${pct(r.coverage)} of the question's words.`
            : (r.hits[0]?.score ?? -Infinity) >= r.threshold
              ? `Not in the knowledge base: the topic is, but the passages hold only ${pct(r.coverage)} of the question's words (at least ${pct(r.coverage_threshold)} needed; missing: ${r.missing.slice(0, 5).join(", ")}); the assistant stays silent.`
              : `Not in the knowledge base: the best score ${fmt(r.hits[0]?.score)} is below the threshold ${fmt(r.threshold)}; the assistant stays silent.`),
        hitsTable(r.hits, r.threshold));
    });
  }

  function runDecision() {
    const text = query.value.trim();
    if (!text) return;
    return busy(async () => {
      const d = await api("/v1/assistant/decide", { method: "POST", body: { text } });
      out.dataset.verdict = d.answered ? "answered" : "silent";
      put(out, 
        h("p", { class: `verdict-line ${d.answered ? "in" : "out"}`, id: "assistant-verdict" },
          d.answered ? "The assistant would answer." : `The assistant would stay silent at ${d.stage}: ${d.reason}`),
        h("ol", { class: "stages" }, d.records.map((rec) => h("li", { class: rec.passed ? "pass" : "stop", dataset: { stage: rec.stage } },
          h("span", { class: "stage-name" }, rec.stage), " ", h("span", { class: "verdict" }, rec.passed ? "pass" : "stop"),
          rec.score !== null && rec.score !== undefined ? ` · score ${fmt(rec.score)}` : "", rec.threshold !== null && rec.threshold !== undefined ? ` (threshold ${fmt(rec.threshold)})` : "",
          h("div", { class: "muted" }, rec.reason)))),
        d.answered ? h("div", { class: "final-answer" }, h("div", { class: "label" }, "answer"), h("pre", { id: "assistant-answer" }, d.answer)) : null,
        d.passages.length ? hitsTable(d.passages.map((p) => ({ ...p, accepted: d.citations.includes(p.number) ? true : undefined })), null) : null);
    });
  }
}
