// The page: views chosen by the URL's hash (#/chat, #/traces, #/evals, and one per app page the server lists, e.g.
// #/research), an API key field, and a banner for problems. Plain ES modules served by `hanlin serve` itself:
// nothing is fetched from anywhere else. An app page is a module under /ui/apps/<name>/ exporting page(el, config).
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

// Each view is built once and then shown or hidden, so a chat (and a run streaming into it) survives a look at
// the traces; a new API key starts everything afresh.
const views = new Map();
const builders = { chat: (el) => chatPage(el, config), traces: (el) => tracesPage(el), evals: (el) => evalsPage(el) };
const nav = document.querySelector("header nav");

// The apps' tabs, from the server's config: a link each, and a builder that imports the app's module on first use.
function addAppPages(pages) {
  nav.querySelectorAll("a[data-app]").forEach((a) => a.remove());
  for (const p of pages || []) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(p.name) || !p.module.startsWith("/ui/apps/")) continue;
    nav.append(h("a", { href: `#/${p.name}`, dataset: { page: p.name, app: p.name } }, p.title));
    builders[p.name] = async (el) => (await import(p.module)).page(el, config);
  }
}

function forget() {
  config = null;
  views.clear();
  clear(main);
}

window.addEventListener("hanlin:unauthorized", (e) => {
  forget();
  main.append(h("p", { class: "note error" }, "No data: this server needs its API key. Enter it above."));
  showBanner(`${e.detail}. Enter the server's API key above.`);
  keyInput.focus();
});

keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setKey(keyInput.value.trim());
  forget();
  route();
});

async function route() {
  let page = (location.hash.replace(/^#\/?/, "") || "chat").split("/")[0];
  delete document.body.dataset.ready;
  if (!config) {
    clear(main);
    try {
      config = await api("/v1/ui/config");
    } catch (err) {
      if (err.status !== 401) showBanner(`Cannot reach the server: ${err.message}`);
      return;
    }
    showBanner("");
    document.body.dataset.model = config.model;
    addAppPages(config.pages);
  }
  if (!(page in builders)) page = "chat";
  nav.querySelectorAll("a").forEach((a) => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  for (const [name, el] of views) el.hidden = name !== page;
  if (!views.has(page)) {
    const el = h("section", { class: "view", dataset: { view: page } });
    views.set(page, el);
    main.append(el);
    try {
      await builders[page](el);
    } catch (err) {
      el.append(h("p", { class: "note error", role: "alert" }, `This page failed to load: ${err.message}`));
    }
  }
  if (views.get(page)?.isConnected) document.body.dataset.ready = page;
}

keyInput.value = getKey();
window.addEventListener("hashchange", route);
route();
