// DOM from text only. Strings always become text nodes (never HTML), and attributes named on* are refused, so
// nothing a model, a tool or a file says can become markup or script. No module of the page parses HTML from strings.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      if (typeof value !== "function") throw new Error(`refusing a string handler for ${name}`);
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "value" || name === "checked" || name === "disabled" || name === "open" || name === "selected") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  return append(el, children);
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// A value shown as text: strings as they are, anything else as indented JSON.
export function asText(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

export function fmtUsage(u) {
  if (!u) return "";
  const parts = [`prompt ${u.prompt_tokens ?? 0}`];
  if (u.prompt_tokens_reused !== null && u.prompt_tokens_reused !== undefined) parts.push(`reused ${u.prompt_tokens_reused}`);
  parts.push(`completion ${u.completion_tokens ?? 0}`);
  return parts.join(" · ") + " tokens";
}

export function fmtSeconds(s) {
  if (typeof s !== "number") return "";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

export function message(kind, text) {
  return h("p", { class: `note ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}
