// Chat with an agent: the served model, a protocol, the ticked tools. Each turn streams the agent's steps as they
// happen; Stop cancels the run on the server; turns of one session share their history (kept by the server).
import { api, download, events } from "./api.js";
import { fmtUsage, h, message } from "./dom.js";
import { RunView } from "./steps.js";

export function chatPage(root, config) {
  const state = { session: null, controller: null, runId: null };
  const protocol = h("select", { id: "protocol" },
    config.protocols.map((p) => h("option", { value: p, selected: p === config.default_protocol }, p)));
  const tools = config.tools.map((t) => h("label", { class: "tool", title: t.description.split("\n")[0] },
    h("input", { type: "checkbox", name: "tool", value: t.name, checked: config.default_tools.includes(t.name) }), t.name));
  const maxSteps = h("input", { id: "max-steps", type: "number", min: "1", max: "50", value: String(config.default_max_steps ?? 10), inputmode: "numeric" });
  const sessionLabel = h("span", { class: "session", "aria-live": "polite" }, "new session");
  // Not a live region: streamed tokens would make a screen reader talk over itself; each turn's status line is one.
  const log = h("section", { class: "log", "aria-label": "conversation" },
    h("p", { class: "hint" }, `Ask the agent something. Model: ${config.model}. Enter sends, Shift+Enter is a new line, Esc stops a run.`));
  const input = h("textarea", { id: "message", rows: "2", placeholder: "Message the agent", "aria-label": "message" });
  const send = h("button", { type: "submit", class: "primary", id: "send" }, "Send");
  const stop = h("button", { type: "button", id: "stop", disabled: true, onclick: () => stopRun() }, "Stop");
  const newSession = h("button", { type: "button", id: "new-session", onclick: () => reset() }, "New session");
  const form = h("form", { class: "composer", onsubmit: (e) => { e.preventDefault(); sendMessage(); } }, input, send, stop);

  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendMessage(); }
  });
  root.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.controller) stopRun(); });

  root.append(h("div", { class: "chat" },
    h("div", { class: "controls" },
      h("label", { class: "field" }, "Protocol ", protocol),
      h("fieldset", { class: "tools" }, h("legend", {}, "Tools"), tools.length ? tools : h("span", { class: "muted" }, "none offered")),
      h("label", { class: "field" }, "Max steps ", maxSteps), sessionLabel, newSession),
    log, form));
  input.focus();

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
    protocol.disabled = on;
    newSession.disabled = on;
  }

  async function reset() {
    if (state.session) api(`/v1/ui/sessions/${encodeURIComponent(state.session)}`, { method: "DELETE" }).catch(() => {});
    state.session = null;
    sessionLabel.textContent = "new session";
    log.replaceChildren(h("p", { class: "hint" }, "New session: the agent remembers nothing from before."));
    input.focus();
  }

  async function stopRun() {
    stop.disabled = true;
    const id = state.runId;
    try {
      if (id) await api(`/v1/ui/runs/${encodeURIComponent(id)}`, { method: "DELETE" });
    } catch { /* the stream's end says what happened */ }
    state.controller?.abort();
  }

  async function sendMessage() {
    const text = input.value.trim();
    if (!text || state.controller) return;
    input.value = "";
    log.querySelector(".hint")?.remove();
    const turn = h("article", { class: "turn" }, h("div", { class: "user-message" }, h("div", { class: "label" }, "You"), h("pre", {}, text)));
    const stepsRoot = h("div", { class: "steps" });
    const status = h("p", { class: "run-status", role: "status" }, "running…");
    const footer = h("div", { class: "run-footer" }, status);
    turn.append(stepsRoot, footer);
    log.append(turn);
    const view = new RunView(stepsRoot);
    const body = {
      message: text, session_id: state.session, protocol: protocol.value, max_steps: Number(maxSteps.value) || 10,
      tools: tools.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value),
    };
    state.controller = new AbortController();
    busy(true);
    let ended = null;
    try {
      for await (const event of events("/v1/ui/runs", body, state.controller.signal)) {
        // Follow the run as it grows, unless the reader scrolled up to read something.
        const following = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
        if (event.type === "run") {
          state.runId = event.run_id;
          state.session = event.session_id;
          turn.dataset.runId = event.run_id;
          sessionLabel.textContent = `session ${event.session_id}`;
        } else if (event.type === "run_ended") {
          ended = event.status;
        } else {
          view.add(event);
        }
        if (following) form.scrollIntoView({ block: "end" });
      }
    } catch (err) {
      if (err.name !== "AbortError") footer.append(message("error", err.message));
      ended = ended || (err.name === "AbortError" ? "cancelled" : "error");
    } finally {
      state.controller = null;
      busy(false);
    }
    ended = ended || "cancelled";
    turn.dataset.status = ended;
    status.textContent = ended === "answered" ? "answered" : ended === "cancelled" ? "stopped: the run was cancelled" : `ended: ${ended.replace("_", " ")}`;
    if (view.finished) status.append(` · ${view.finished.step} step(s) · ${fmtUsage(view.finished.usage)}`);
    if (ended !== "cancelled" && state.runId) {
      const id = state.runId;
      footer.append(h("button", { type: "button", class: "download", onclick: () => download(`/v1/ui/runs/${encodeURIComponent(id)}/trace`, `${id}.jsonl`).catch((e) => footer.append(message("error", e.message))) }, "Download trace (JSONL)"));
    }
    if (view.steps.size > 2) view.foldAllButLast();
    state.runId = null;
    input.focus();
  }
}
