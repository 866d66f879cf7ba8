// Evaluation results: a `hanlin eval --out` folder the server was told to serve. The score table (with standard
// errors, as scores.json holds them), per-item predictions (wrong only, by dataset and group), and the comparison
// with a second folder (the same cells side by side, B minus A).
import { api, blob } from "./api.js";
import { clear, h, message } from "./dom.js";

const folderPath = (id) => id.split("/").map(encodeURIComponent).join("/");
const num = (v, digits = 4) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");

export async function evalsPage(root) {
  const folderA = h("select", { id: "eval-folder" });
  const folderB = h("select", { id: "eval-compare" }, h("option", { value: "" }, "(none)"));
  const scoresBox = h("section", { class: "scores", "aria-label": "scores" });
  const predsBox = h("section", { class: "predictions", "aria-label": "predictions" });
  root.append(h("div", { class: "evals" },
    h("div", { class: "controls" }, h("label", { for: "eval-folder" }, "Result folder "), folderA,
      h("label", { for: "eval-compare" }, "Compare with "), folderB),
    scoresBox, predsBox));

  let folders;
  try {
    folders = (await api("/v1/ui/evals")).folders;
  } catch (err) {
    return scoresBox.append(message("error", err.message));
  }
  if (!folders.length) {
    return scoresBox.append(message("info", "This server serves no evaluation folder. Start it with "
      + "`hanlin serve --eval-folder DIR` (a `hanlin eval --out` folder, or a folder of them)."));
  }
  folders.forEach((f) => {
    folderA.append(h("option", { value: f.id }, `${f.name} (${f.id})`));
    folderB.append(h("option", { value: f.id }, `${f.name} (${f.id})`));
  });
  folderA.addEventListener("change", load);
  folderB.addEventListener("change", load);
  let latest = 0; // the newest load: an older one still awaiting the server must not add its tables too
  await load();

  async function load() {
    const mine = ++latest;
    const current = () => mine === latest;
    clear(scoresBox);
    clear(predsBox);
    let a, b = null;
    try {
      a = await api(`/v1/ui/evals/${folderPath(folderA.value)}/scores`);
      if (folderB.value) b = await api(`/v1/ui/evals/${folderPath(folderB.value)}/scores`);
    } catch (err) {
      if (current()) scoresBox.append(message("error", err.message));
      return;
    }
    if (!current()) return;
    scoresBox.append(scoreTable(a, b));
    if (Object.keys(a.models || {}).length > 1) chart(scoresBox, folderA.value, current);
    predictions(predsBox, folderA.value, a);
  }
}

// The folder's scores.png, as `hanlin eval` drew it (models side by side, standard errors as error bars).
async function chart(box, folder, current) {
  let image;
  try {
    image = await blob(`/v1/ui/evals/${folderPath(folder)}/chart`);
  } catch (err) {
    if (current()) box.append(message("info", err.status === 404 ? "No chart in this folder (scores.png)." : err.message));
    return;
  }
  if (!current()) return;
  const url = URL.createObjectURL(image);
  const img = h("img", { class: "chart", src: url, alt: "Scores of the models in this folder, with standard errors" });
  img.addEventListener("load", () => URL.revokeObjectURL(url));
  box.append(h("details", { class: "block", open: true }, h("summary", {}, "Chart"), img));
}

function rows(scores) {
  const out = [];
  for (const [model, entry] of Object.entries(scores.models || {})) {
    for (const [dataset, record] of Object.entries(entry.datasets || {})) {
      for (const [metric, s] of Object.entries(record.metrics || {})) out.push({ model, dataset, group: "", metric, s, record });
      for (const [group, s] of Object.entries(record.groups || {})) {
        out.push({ model, dataset, group, metric: record.group_metric || "accuracy", s, record });
      }
    }
  }
  return out;
}

function scoreTable(a, b) {
  const other = new Map((b ? rows(b) : []).map((r) => [`${r.model}\u0000${r.dataset}\u0000${r.group}\u0000${r.metric}`, r.s]));
  const head = ["Model", "Dataset", "Metric", "Score", "± stderr", "N", "Answered", "Errors"];
  if (b) head.push("Score (B)", "B − A");
  const body = rows(a).map((r) => {
    const value = r.s.value;
    const bar = typeof value === "number" && value >= 0 && value <= 1
      ? h("meter", { min: "0", max: "1", value: String(value), "aria-hidden": "true" }) : null;
    const cells = [
      h("td", {}, r.model), h("td", {}, r.dataset),
      h("td", {}, r.group ? `${r.metric} · ${r.group}` : r.metric),
      h("td", { class: "score", dataset: { value: String(value) } }, num(value), bar),
      h("td", { class: "stderr", dataset: { value: String(r.s.stderr) } }, num(r.s.stderr)),
      h("td", { class: "n" }, String(r.s.n ?? "")),
      h("td", {}, r.group ? "" : `${Math.round((r.record.answered ?? 0) * 100)}%`),
      h("td", {}, r.group ? "" : String(r.record.errors ?? 0)),
    ];
    if (b) {
      const s = other.get(`${r.model}\u0000${r.dataset}\u0000${r.group}\u0000${r.metric}`);
      const delta = s && typeof s.value === "number" && typeof value === "number" ? s.value - value : null;
      cells.push(h("td", { class: "score-b" }, s ? num(s.value) : "–"),
        h("td", { class: delta > 0 ? "delta up" : delta < 0 ? "delta down" : "delta" }, delta === null ? "–" : (delta > 0 ? "+" : "") + num(delta)));
    }
    return h("tr", { class: r.group ? "group-row" : "metric-row", dataset: { model: r.model, dataset: r.dataset, metric: r.metric, group: r.group } }, cells);
  });
  const notes = Object.values(a.models || {}).flatMap((e) => Object.entries(e.datasets || {}).flatMap(([d, rec]) => (rec.notes || []).map((n) => `${d}: ${n}`)));
  return h("div", {},
    h("h2", {}, "Scores"),
    h("p", { class: "muted" }, `hanlin ${a.hanlin_version ?? "?"} · updated ${a.updated ?? "?"}`),
    h("div", { class: "table-wrap" }, h("table", { class: "score-table" },
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, body))),
    notes.length ? h("ul", { class: "notes" }, notes.map((n) => h("li", {}, n))) : null);
}

function predictions(box, folder, scores) {
  const pairs = Object.entries(scores.models || {}).flatMap(([m, e]) => Object.keys(e.datasets || {}).map((d) => [m, d]));
  if (!pairs.length) return;
  const which = h("select", { id: "pred-dataset" }, pairs.map(([m, d], i) => h("option", { value: String(i) }, `${m} · ${d}`)));
  const wrongOnly = h("input", { type: "checkbox", id: "wrong-only" });
  const group = h("select", { id: "pred-group" }, h("option", { value: "" }, "all groups"));
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const table = h("div", { class: "table-wrap" });
  box.append(h("h2", {}, "Predictions"),
    h("div", { class: "controls" }, h("label", { for: "pred-dataset" }, "Dataset "), which,
      h("label", { class: "check" }, wrongOnly, " wrong only"), h("label", { for: "pred-group" }, "Group "), group),
    count, table);
  let items = [];
  which.addEventListener("change", fetchItems);
  wrongOnly.addEventListener("change", render);
  group.addEventListener("change", render);
  fetchItems();

  async function fetchItems() {
    const [model, dataset] = pairs[Number(which.value)];
    clear(table);
    try {
      const q = new URLSearchParams({ model, dataset });
      const data = await api(`/v1/ui/evals/${folderPath(folder)}/predictions?${q}`);
      items = data.predictions;
      if (data.truncated) count.dataset.truncated = "true";
    } catch (err) {
      items = [];
      table.append(message("error", err.message));
    }
    const groups = [...new Set(items.map((p) => p.group).filter(Boolean))].sort();
    group.replaceChildren(h("option", { value: "" }, "all groups"), ...groups.map((g) => h("option", { value: g }, g)));
    render();
  }

  function render() {
    const shown = items.filter((p) => (!wrongOnly.checked || !p.correct) && (!group.value || p.group === group.value));
    count.textContent = `${shown.length} of ${items.length} item(s)`;
    clear(table);
    if (!items.length) return;
    table.append(h("table", { class: "pred-table" },
      h("thead", {}, h("tr", {}, ["Item", "Group", "Gold", "Extracted", "Verdict", "Output"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, shown.slice(0, 1000).map((p) => h("tr", { class: p.correct ? "right" : "wrong" },
        h("td", {}, String(p.id), p.sample ? ` #${p.sample}` : ""), h("td", {}, p.group ?? ""), h("td", {}, p.gold ?? ""),
        h("td", {}, p.extracted ?? "(none)"),
        h("td", { class: "verdict" }, p.correct ? "right" : p.error ? "error" : "wrong"),
        h("td", {}, h("details", {}, h("summary", {}, (p.output || "").slice(0, 80) || "(empty)"),
          h("pre", {}, p.output ?? ""), p.error ? h("pre", { class: "is-error" }, p.error) : null, p.detail ? h("pre", {}, p.detail) : null)))))));
  }
}
