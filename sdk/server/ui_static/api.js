// Talking to /v1/ui: every request carries the API key the page was given (kept for this tab only).

const KEY = "hanlin.apiKey";

export const getKey = () => sessionStorage.getItem(KEY) || "";
export const setKey = (key) => (key ? sessionStorage.setItem(KEY, key) : sessionStorage.removeItem(KEY));

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(res) {
  let text = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    text = body?.error?.message || text;
  } catch {
    /* not JSON: keep the status line */
  }
  if (res.status === 401) window.dispatchEvent(new CustomEvent("hanlin:unauthorized", { detail: text }));
  return new ApiError(res.status, text);
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  return (res.headers.get("content-type") || "").startsWith("application/json") ? res.json() : res.text();
}

// A POST answered with server-sent events, yielded as parsed JSON objects (EventSource cannot POST or send headers).
export async function* events(path, body, signal) {
  const res = await fetch(path, {
    method: "POST", signal, body: JSON.stringify(body),
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data && data !== "[DONE]") yield JSON.parse(data);  // [DONE]: the OpenAI-style end of a stream
    }
  }
}

// What a GET returns, as a Blob (an image to show through an object URL: the key cannot ride on an <img> request).
export async function blob(path) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw await failure(res);
  return res.blob();
}

// Save what a GET returns as a file (the key goes in a header, so a plain link cannot fetch it).
export async function download(path, filename) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw await failure(res);
  const url = URL.createObjectURL(await res.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
