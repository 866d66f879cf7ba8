// An agent run drawn from its events, one foldable block per step; the chat feeds it live, the trace viewer from a
// file. The events are hanlin's own (step_started, token, tool_call, tool_result, error, final_answer, run_finished)
// plus the server's per-call "usage"; all of their text is shown as text.
import { asText, fmtSeconds, fmtUsage, h } from "./dom.js";

export class RunView {
  constructor(root) {
    this.root = root;
    this.steps = new Map();
    this.finished = null;
    this.answer = null;
  }

  step(n, phase) {
    let step = this.steps.get(n);
    if (!step) {
      const usage = h("span", { class: "usage" });
      const title = n ? `Step ${n}` : "Before the first step";
      const details = h("details", { class: "step", open: true, dataset: { step: String(n) } },
        h("summary", {}, h("span", { class: "step-title" }, title), h("span", { class: "phase" }), usage));
      step = { details, usage, body: h("div", { class: "step-body" }), output: null, tokens: null };
      details.append(step.body);
      this.steps.set(n, step);
      this.root.append(details);
    }
    if (phase) step.details.querySelector(".phase").textContent = phase;
    return step;
  }

  add(event) {
    const n = event.step ?? 0;
    switch (event.type) {
      case "step_started":
        this.step(n, event.phase);
        break;
      case "token": {
        const step = this.step(n);
        if (!step.output) {
          step.output = h("pre", { class: "model-output", "aria-label": "model output" });
          step.body.append(h("div", { class: "label" }, "Model output"), step.output);
        }
        step.output.append(event.text);
        break;
      }
      case "usage": {
        const step = this.step(n);
        step.tokens = sumUsage(step.tokens, event.usage);
        step.usage.textContent = fmtUsage(step.tokens);
        break;
      }
      case "tool_call":
        this.step(n).body.append(h("div", { class: "tool-call" },
          h("div", { class: "label" }, "Tool call ", h("code", {}, event.call?.name ?? "?")),
          h("pre", { class: "args" }, asText(event.call?.arguments ?? {}))));
        break;
      case "tool_result":
        this.step(n).body.append(h("div", { class: event.is_error ? "observation is-error" : "observation" },
          h("div", { class: "label" }, `Observation from `, h("code", {}, event.name ?? "?"),
            event.duration_s !== undefined ? ` · ${fmtSeconds(event.duration_s)}` : "", event.is_error ? " · failed" : ""),
          h("pre", {}, asText(event.content ?? ""))));
        break;
      case "error":
        if (event.kind === "tool_failed" && event.recoverable) {  // its text is the observation that follows
          this.step(n).body.append(h("div", { class: "run-error compact label" }, "The tool failed; the model is shown its error:"));
          break;
        }
        this.step(n).body.append(h("div", { class: "run-error", role: "note" },
          h("div", { class: "label" }, event.recoverable ? `Shown to the model (${event.kind})` : `Error (${event.kind})`),
          h("pre", {}, asText(event.message ?? ""))));
        break;
      case "final_answer":
        this.answer = h("div", { class: "final-answer" }, h("div", { class: "label" }, "Answer"),
          h("pre", { class: "answer-text" }, asText(event.text ?? event.output ?? "")));
        this.step(n).body.append(this.answer);
        break;
      case "run_finished":
        this.finished = event;
        break;
      default:
        break;
    }
  }

  // Fold every step but the last (a long run stays readable once it ends).
  foldAllButLast() {
    const all = [...this.steps.values()];
    all.forEach((s, i) => { s.details.open = i === all.length - 1; });
  }
}

export function sumUsage(a, b) {
  if (!a) return { ...b };
  const add = (x, y) => (x === null || x === undefined) && (y === null || y === undefined) ? null : (x || 0) + (y || 0);
  return {
    prompt_tokens: add(a.prompt_tokens, b.prompt_tokens), completion_tokens: add(a.completion_tokens, b.completion_tokens),
    prompt_tokens_evaluated: add(a.prompt_tokens_evaluated, b.prompt_tokens_evaluated),
    prompt_tokens_reused: add(a.prompt_tokens_reused, b.prompt_tokens_reused),
  };
}
