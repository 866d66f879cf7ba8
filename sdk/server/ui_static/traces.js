// The trace viewer: a trace JSONL (as Agent runs write it with save_trace) opened from this computer, read in the
// page and never uploaded, or a recent run of this server. Each record: its summary, its steps (tool calls,
// results, timings), the transcript, and the model's view of its last call.
import { api } from "./api.js";
import { asText, clear, fmtUsage, h, message } from "./dom.js";
import { RunView } from "./steps.js";

export function tracesPage(root) {
  const file = h("input", { type: "file", id: "trace-file", accept: ".jsonl,.json,.txt,application/x-ndjson" });
  const recent = h("div", { class: "recent" });
  const picker = h("nav", { class: "records", "aria-label": "runs in this trace" });
  const view = h("div", { class: "trace" });
  root.append(h("div", { class: "traces" },
    h("div", { class: "controls" }, h("label", { for: "trace-file" }, "Open a trace file "), file,
      h("button", { type: "button", onclick: () => loadRecent() }, "Recent runs on this server")),
    recent, picker, view));

  file.addEventListener("change", async () => {
    const chosen = file.files?.[0];
    if (chosen) show(await chosen.text(), chosen.name);
  });

  async function loadRecent() {
    clear(recent);
    try {
      const { recent: runs } = await api("/v1/ui/runs");
      const usable = runs.filter((r) => r.has_trace);
      if (!usable.length) return recent.append(message("info", "No finished run on this server yet."));
      recent.append(h("ul", { class: "run-list" }, usable.map((r) => h("li", {},
        h("button", { type: "button", class: "link", onclick: async () => show(await api(`/v1/ui/runs/${encodeURIComponent(r.id)}/trace`), r.id) },
          `${new Date(r.started * 1000).toLocaleTimeString()} · ${r.status} · ${r.steps} step(s) · `, r.message)))));
    } catch (err) {
      recent.append(message("error", err.message));
    }
  }

  function show(text, name) {
    clear(picker);
    clear(view);
    const records = [];
    const problems = [];
    text.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      try {
        const record = JSON.parse(line);
        if (!Array.isArray(record.messages)) throw new Error("no messages: not a hanlin trace record");
        records.push(record);
      } catch (err) {
        problems.push(`line ${i + 1}: ${err.message}`);
      }
    });
    problems.slice(0, 5).forEach((p) => view.append(message("error", `${name}: ${p}`)));
    if (!records.length) return view.append(message("error", `${name}: no trace records found`));
    const buttons = records.map((r, i) => h("button", { type: "button", class: "record", onclick: () => select(i) },
      `Run ${i + 1}: ${r.status} · ${r.steps} step(s)`));
    picker.append(h("span", { class: "muted" }, `${name}: ${records.length} run(s) `), ...buttons);
    select(0);

    function select(i) {
      buttons.forEach((b, j) => b.setAttribute("aria-current", String(i === j)));
      clear(view);
      view.append(record(records[i]));
    }
  }
}

function record(r) {
  const out = h("article", { class: "record-view" });
  const answer = typeof r.output === "string" ? r.output : r.output === null || r.output === undefined ? "" : asText(r.output);
  out.append(h("dl", { class: "summary" },
    h("dt", {}, "Status"), h("dd", { class: "trace-status" }, r.status),
    h("dt", {}, "Steps"), h("dd", {}, String(r.steps ?? "")),
    h("dt", {}, "Usage"), h("dd", {}, fmtUsage(r.usage)),
    answer ? [h("dt", {}, "Output"), h("dd", { class: "trace-output" }, answer)] : null,
    r.error ? [h("dt", {}, "Error"), h("dd", {}, r.error)] : null,
    r.samples > 1 ? [h("dt", {}, "Samples"), h("dd", {}, `${r.samples}, agreement ${r.agreement}`)] : null));

  const stepsRoot = h("div", { class: "steps" });
  const steps = new RunView(stepsRoot);
  (r.events || []).forEach((e) => steps.add(e));
  const all = [...steps.steps.values()].map((s) => s.details);
  let current = -1;
  const position = h("span", { class: "muted", "aria-live": "polite" });
  const go = (delta) => {
    if (!all.length) return;
    current = Math.max(0, Math.min(all.length - 1, current + delta));
    all.forEach((d, i) => { d.open = i === current; });
    all[current].querySelector("summary").focus();
    position.textContent = `step ${current + 1} of ${all.length}`;
  };
  out.append(h("section", {}, h("h2", {}, "Steps"),
    h("div", { class: "stepper" },
      h("button", { type: "button", onclick: () => go(-1) }, "◀ Previous step"),
      h("button", { type: "button", onclick: () => go(1) }, "Next step ▶"),
      h("button", { type: "button", onclick: () => all.forEach((d) => { d.open = true; }) }, "Open all"), position),
    all.length ? stepsRoot : message("info", "This trace has no events.")));

  out.append(h("details", { class: "block" }, h("summary", {}, `Transcript (${r.messages.length} messages)`), messages(r.messages)));
  if (r.model_view) {
    const tools = r.model_view.tools;
    out.append(h("details", { class: "block model-view" }, h("summary", {}, "The model's view of its last call"),
      messages(r.model_view.messages || []),
      tools && tools.length ? h("details", {}, h("summary", {}, `Tools offered (${tools.length})`), h("pre", {}, asText(tools))) : null));
  }
  return out;
}

function messages(list) {
  return h("ol", { class: "messages" }, list.map((m) => h("li", { class: `message role-${m.role}` },
    h("div", { class: "label" }, m.role, m.name ? ` (${m.name})` : ""),
    m.content ? h("pre", {}, asText(m.content)) : null,
    (m.tool_calls || []).map((c) => h("pre", { class: "args" }, `→ ${c.name} ${asText(c.arguments)}`)))));
}
