// The page: three views chosen by the URL's hash (#/chat, #/traces, #/evals), an API key field, and a banner for
// problems. Plain ES modules served by `hanlin serve` itself: nothing is fetched from anywhere else.
import { api, getKey, setKey } from "./api.js";
import { chatPage } from "./chat.js";
import { clear, h } from "./dom.js";
import { evalsPage } from "./evals.js";
import { tracesPage } from "./traces.js";

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
let config = null;

function showBanner(text) {
  banner.textContent = text;
  banner.hidden = !text;
}

window.addEventListener("hanlin:unauthorized", (e) => {
  config = null;
  clear(main);
  main.append(h("p", { class: "note error" }, "No data: this server needs its API key. Enter it above."));
  showBanner(`${e.detail}. Enter the server's API key above.`);
  keyInput.focus();
});

keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setKey(keyInput.value.trim());
  config = null;
  route();
});

async function route() {
  const page = (location.hash.replace(/^#\/?/, "") || "chat").split("/")[0];
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  clear(main);
  delete document.body.dataset.ready;
  try {
    config = config || (await api("/v1/ui/config"));
  } catch (err) {
    if (err.status !== 401) showBanner(`Cannot reach the server: ${err.message}`);
    return;
  }
  showBanner("");
  document.body.dataset.model = config.model;
  if (page === "traces") tracesPage(main);
  else if (page === "evals") await evalsPage(main);
  else chatPage(main, config);
  document.body.dataset.ready = page;
}

keyInput.value = getKey();
window.addEventListener("hashchange", route);
route();
