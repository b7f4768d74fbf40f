// saekit feature browser: a dependency-free single-page app over the JSON API of server.py.
// Every string from the data is inserted with textContent (never innerHTML): token strings are
// arbitrary text from the corpus.
"use strict";

const app = document.getElementById("app");
let META = null;

// ---- helpers ---------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1000 || a < 1e-3) return v.toExponential(2);
  return v.toPrecision(digits);
}

function pct(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0%";
  const p = 100 * v;
  return (p >= 1 ? p.toFixed(2) : p.toPrecision(2)) + "%";
}

const NEWLINE = "↵";  // one glyph for a line break, in chips and in running text alike

function showToken(s) {
  // A chip is a token on its own, so its whitespace is made visible.
  return s.replace(/ /g, "␣").replace(/\r\n|\r|\n/g, NEWLINE).replace(/\t/g, "⇥") || "∅";
}

// A token inside running text. Its text is exactly the piece it adds to the decoded context
// (leading space included), with no padding or border, so the pieces of one word join into
// the word and the shading covers the token's own text. A line break is drawn as a glyph
// instead of breaking the line: a newline token can carry an activation, and a 15-token
// window split over several lines is harder to read. Tokens that only hold the first bytes of
// a character have an empty piece (text.py); when shaded they show as a thin sliver.
function tokenSpan(piece, value, max, cls = "") {
  const span = el("span", { class: ("tok " + cls).trim() });
  piece.split(/\r\n|\r|\n/).forEach((part, i) => {
    if (i > 0) span.append(el("span", { class: "nl", text: NEWLINE }));
    if (part) span.append(part);
  });
  if (!piece) {
    span.classList.add("part");
    if (value) span.classList.add("sliver");
  }
  shade(span, value, max);
  return span;
}

function chip(s, cls = "chip") {
  return el("span", { class: cls, text: showToken(s) });
}

function shade(node, value, max) {
  if (!value || !max) return;
  const a = Math.min(1, Math.abs(value) / max);
  const rgb = value > 0 ? "var(--hi)" : "var(--neg)";
  node.style.background = `rgba(${rgb}, ${(0.12 + 0.78 * a).toFixed(3)})`;
}

function errorBox(e) {
  return el("p", { class: "error", text: String(e.message || e) });
}

function setActiveNav(which) {
  document.getElementById("nav-list").className = which === "list" ? "active" : "";
  document.getElementById("nav-try").className = which === "try" ? "active" : "";
}

// ---- latent list -----------------------------------------------------------------------------
const COLUMNS = [
  ["id", "Latent", true],
  ["density", "Density", true],
  ["max_act", "Max act.", true],
  ["top_tokens", "Top tokens", false],
  ["logit_top", "Logit lens", false],
  ["simulator_r", "Lookup r", true],
];

function listState(params) {
  return {
    q: params.get("q") || "",
    sort: params.get("sort") || "density",
    order: params.get("order") || "",
    page: parseInt(params.get("page") || "0", 10) || 0,
  };
}

function listHash(st) {
  const p = new URLSearchParams();
  if (st.q) p.set("q", st.q);
  p.set("sort", st.sort);
  if (st.order) p.set("order", st.order);
  if (st.page) p.set("page", String(st.page));
  return "#/?" + p.toString();
}

async function renderList(params) {
  setActiveNav("list");
  const st = listState(params);
  const search = el("input", {
    type: "search", id: "search", placeholder: "Search token text or latent id…", value: st.q,
    "aria-label": "search latents",
  });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { location.hash = listHash({ ...st, q: search.value.trim(), page: 0 }); }, 300);
  });
  const count = el("span", { class: "muted", id: "count" });
  const body = el("tbody", {});
  const header = el("tr", {}, COLUMNS.map(([key, label, sortable]) => {
    const th = el("th", { "data-key": key, text: label });
    if (sortable) {
      if (key === st.sort) th.className = "sorted" + ((st.order || (key === "id" ? "asc" : "desc")) === "asc" ? " asc" : "");
      th.addEventListener("click", () => {
        const current = st.order || (st.sort === "id" ? "asc" : "desc");
        const order = key === st.sort ? (current === "asc" ? "desc" : "asc") : "";
        location.hash = listHash({ ...st, sort: key, order, page: 0 });
      });
    } else th.style.cursor = "default";
    return th;
  }));
  const pager = el("div", { class: "pager" });
  app.replaceChildren(
    el("div", { class: "controls" }, search, count),
    el("table", { class: "latents", id: "latent-table" }, el("thead", {}, header), body),
    pager,
  );
  search.focus();
  search.setSelectionRange(search.value.length, search.value.length);
  let data;
  try {
    const q = new URLSearchParams({ q: st.q, sort: st.sort, page: String(st.page), per_page: "50" });
    if (st.order) q.set("order", st.order);
    data = await api("/api/latents?" + q.toString());
  } catch (e) { app.append(errorBox(e)); return; }
  const maxDensity = Math.max(1e-12, ...data.rows.map((r) => r.density || 0));
  for (const r of data.rows) {
    const link = el("a", { href: `#/latent/${r.id}`, text: `#${r.id}` });
    body.append(el("tr", { class: "latent-row", "data-id": String(r.id) },
      el("td", {}, link),
      el("td", { class: "num" }, pct(r.density), el("span", { class: "bar", style: null })),
      el("td", { class: "num", text: fmt(r.max_act) }),
      el("td", {}, r.top_tokens.map((t) => chip(t))),
      el("td", {}, r.logit_top.map((t) => chip(t, "chip logit"))),
      el("td", { class: "num", text: fmt(r.simulator_r, 2) }),
    ));
    const bar = body.lastChild.children[1].querySelector(".bar");
    bar.style.width = `${Math.round(60 * (r.density || 0) / maxDensity)}px`;
  }
  if (!data.rows.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "No latent matches." })));
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  count.textContent = `${data.total.toLocaleString()} latents · page ${data.page + 1} of ${pages}`;
  const go = (p) => () => { location.hash = listHash({ ...st, page: p }); };
  pager.append(
    el("button", { onclick: go(0), disabled: data.page === 0 }, "« First"),
    el("button", { id: "prev", onclick: go(data.page - 1), disabled: data.page === 0 }, "‹ Prev"),
    el("span", { class: "muted", text: `page ${data.page + 1} / ${pages}` }),
    el("button", { id: "next", onclick: go(data.page + 1), disabled: data.page + 1 >= pages }, "Next ›"),
    el("button", { onclick: go(pages - 1), disabled: data.page + 1 >= pages }, "Last »"),
  );
}

// ---- one latent --------------------------------------------------------------------------------
function exampleRow(ex, max) {
  const text = el("span", { class: "text" });
  ex.tokens.forEach((t, i) => {
    const span = tokenSpan(t, ex.acts[i], max, i === ex.center ? "center" : "");
    if (ex.acts[i]) span.title = `activation ${fmt(ex.acts[i])}`;
    text.append(span);
  });
  return el("div", { class: "example" }, el("span", { class: "val", text: fmt(ex.acts[ex.center]) }), text);
}

function histogram(hist) {
  const W = 360, H = 120, pad = 18;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + pad}`);
  svg.setAttribute("class", "hist");
  svg.setAttribute("width", "100%");
  const n = hist.counts.length;
  const top = Math.max(1, ...hist.counts);
  hist.counts.forEach((c, i) => {
    const h = c ? Math.max(1, (H - 4) * Math.log1p(c) / Math.log1p(top)) : 0;
    const r = document.createElementNS(svgNS, "rect");
    r.setAttribute("x", String((i * W) / n + 0.5));
    r.setAttribute("width", String(W / n - 1));
    r.setAttribute("y", String(H - h));
    r.setAttribute("height", String(h));
    const t = document.createElementNS(svgNS, "title");
    t.textContent = `${fmt(hist.edges[i])} – ${fmt(hist.edges[i + 1])}: ${c}`;
    r.append(t);
    svg.append(r);
  });
  for (const [x, anchor, v] of [[0, "start", hist.edges[0]], [W, "end", hist.edges[n]]]) {
    const t = document.createElementNS(svgNS, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(H + 13));
    t.setAttribute("text-anchor", anchor);
    t.textContent = fmt(v);
    svg.append(t);
  }
  return svg;
}

function tokenValueList(rows, digits) {
  return el("div", { class: "list2" }, rows.flatMap(([t, v]) => [chip(t), el("span", { class: "v", text: fmt(v, digits) })]));
}

async function renderLatent(id) {
  setActiveNav("");
  app.replaceChildren(el("p", { class: "muted", text: `Loading latent ${id}…` }));
  let d;
  try { d = await api(`/api/latent/${id}`); } catch (e) { app.replaceChildren(errorBox(e)); return; }
  const n = META.sae.n_latents;
  const flags = [];
  if (d.count === 0) flags.push(el("span", { class: "flag dead", text: "dead on this corpus" }));
  if (d.density > 0.1) flags.push(el("span", { class: "flag dense", text: "dense" }));
  const max = Math.max(Math.abs(d.max_act), Math.abs(d.min_act)) || 1;
  const left = el("div", {},
    el("section", { class: "card", id: "top-examples" },
      el("h2", { text: "Top activations" }),
      d.top.length ? d.top.map((ex) => exampleRow(ex, max)) : el("p", { class: "muted", text: "Never fires on the sample." })),
    el("section", { class: "card", id: "quantiles" },
      el("h2", { text: "Quantile samples" }),
      d.quantiles.map((q) => el("div", { class: "qbin" },
        el("h3", { text: `activations ${fmt(q.range[0])} – ${fmt(q.range[1])}` }),
        q.examples.map((ex) => exampleRow(ex, max))))),
    tryBox(d.id, max),
  );
  const right = el("div", {},
    el("section", { class: "card" }, el("h2", { text: "Activation histogram" }),
      d.hist ? histogram(d.hist) : el("p", { class: "muted", text: "–" }),
      el("p", { class: "muted", text: "non-zero activations; log-scaled counts" })),
    d.logit_top ? el("section", { class: "card", id: "logit-lens" }, el("h2", { text: "Logit lens: promotes" }),
      tokenValueList(d.logit_top, 3), el("h2", { class: "spaced", text: "Logit lens: suppresses" }), tokenValueList(d.logit_bottom, 3)) : null,
    el("section", { class: "card" }, el("h2", { text: "Top tokens (share of activation)" }),
      d.top_tokens.length ? tokenValueList(d.top_tokens.map(([t, s]) => [t, s]), 2) : el("p", { class: "muted", text: "–" })),
    el("section", { class: "card", id: "neighbours" }, el("h2", { text: "Nearest latents (decoder cosine)" }),
      el("div", { class: "list2" }, d.neighbours.flatMap((nb) => [
        el("span", {}, el("a", { href: `#/latent/${nb.id}`, text: `#${nb.id}` }), " ", nb.top_tokens.slice(0, 2).map((t) => chip(t))),
        el("span", { class: "v", text: fmt(nb.cos, 3) }),
      ]))),
  );
  app.replaceChildren(
    el("div", { class: "navrow" },
      el("a", { href: "#/" }, "← all latents"),
      id > 0 ? el("a", { href: `#/latent/${id - 1}` }, "‹ prev") : null,
      id + 1 < n ? el("a", { href: `#/latent/${id + 1}` }, "next ›") : null),
    el("h1", { id: "latent-title" }, `Latent #${d.id}`, flags),
    el("div", { class: "stats" },
      [["density", pct(d.density)], ["max activation", fmt(d.max_act)], ["mean (non-zero)", fmt(d.mean_act)],
        ["fires on", `${d.count.toLocaleString()} tokens`], ["lookup simulator r", fmt(d.simulator_r, 2)]]
        .map(([k, v]) => el("div", { class: "stat" }, el("b", { text: v }), el("span", { text: k })))),
    el("div", { class: "grid" }, left, right),
  );
}

function tryBox(latent, max) {
  const input = el("input", { type: "search", placeholder: "Type text to see where this latent fires…", id: "latent-try" });
  const out = el("div", { class: "toks" });
  const run = async () => {
    if (!input.value.trim()) return;
    out.replaceChildren(el("span", { class: "muted", text: "running the model…" }));
    try {
      const r = await api("/api/activate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: input.value, latent }) });
      out.replaceChildren(...r.tokens.map((t, i) => {
        const s = tokenSpan(t.token, r.focus.acts[i], max, t.kept ? "" : "masked");
        s.title = `activation ${fmt(r.focus.acts[i])}`;
        return s;
      }));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
  return el("section", { class: "card" }, el("h2", { text: "Try it" }),
    el("div", { class: "controls" }, input, el("button", { onclick: run }, "Run")), out);
}

// ---- free text -------------------------------------------------------------------------------
function latentLabel(j, cls, tokens) {
  return el("span", {}, el("a", { href: `#/latent/${j}`, class: cls, text: `#${j}` }), " ",
    ((tokens || {})[String(j)] || []).slice(0, 3).map((t) => chip(t)));
}

function renderTry() {
  setActiveNav("try");
  const box = el("textarea", { id: "try-text", placeholder: "Type or paste text, then press Run (Ctrl+Enter)." });
  box.value = sessionStorage.getItem("saekit-try") || "";
  const tokens = el("div", { class: "toks", id: "try-tokens" });
  const detail = el("div", { id: "token-detail" });
  const summary = el("div", { id: "try-summary" });
  const run = async () => {
    sessionStorage.setItem("saekit-try", box.value);
    tokens.replaceChildren(el("span", { class: "muted", text: "running the model…" }));
    detail.replaceChildren();
    summary.replaceChildren();
    let r;
    try {
      r = await api("/api/activate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: box.value }) });
    } catch (e) { tokens.replaceChildren(errorBox(e)); return; }
    const max = Math.max(1e-9, ...r.tokens.map((t) => (t.latents[0] ? Math.abs(t.latents[0][1]) : 0)));
    const show = (t, span) => {
      tokens.querySelectorAll(".selected").forEach((x) => x.classList.remove("selected"));
      span.classList.add("selected");
      detail.replaceChildren(
        el("h2", { text: `token ${JSON.stringify(t.token)}` }),
        !t.kept ? el("p", { class: "muted", text: "Not encoded (special or first token: excluded as in training)." })
          : t.latents.length ? el("div", { class: "list2" }, t.latents.flatMap(([j, v]) => [
            latentLabel(j, "tok-latent", r.latent_tokens), el("span", { class: "v", text: fmt(v) })]))
            : el("p", { class: "muted", text: "No latent fires here." }));
    };
    tokens.replaceChildren(...r.tokens.map((t) => {
      const span = tokenSpan(t.token, t.latents[0] ? t.latents[0][1] : 0, max, t.kept ? "" : "masked");
      span.title = t.latents.map(([j, v]) => `#${j}: ${fmt(v)}`).join("\n") || "no latent";
      span.addEventListener("click", () => show(t, span));
      return span;
    }));
    summary.replaceChildren(
      el("h2", { class: "spaced", text: "Latents firing most on this text" }),
      el("div", { class: "list2", id: "summary-list" }, r.summary.flatMap(([j, v]) => [
        latentLabel(j, "summary-latent", r.latent_tokens), el("span", { class: "v", text: fmt(v) })])));
    const first = r.tokens.findIndex((t) => t.latents.length);
    if (first >= 0) show(r.tokens[first], tokens.children[first]);
  };
  box.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  app.replaceChildren(
    el("h1", { text: "Which latents fire on your text?" }),
    el("section", { class: "card" }, box, el("div", { class: "controls" },
      el("button", { class: "primary", id: "try-run", onclick: run }, "Run"),
      el("span", { class: "muted", text: "Token shading = the strongest latent's activation. Click a token for its latents." }))),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", { text: "Tokens" }), tokens),
      el("section", { class: "card" }, detail, summary)),
  );
  if (box.value.trim()) run();
}

// ---- router ------------------------------------------------------------------------------------
async function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const m = path.match(/^\/latent\/(\d{1,12})$/);
  if (m) return renderLatent(parseInt(m[1], 10));
  if (path === "/try") return renderTry();
  return renderList(new URLSearchParams(query || ""));
}

(async function main() {
  try {
    META = await api("/api/meta");
    document.getElementById("sae-name").textContent =
      `${META.sae.name} · ${META.sae.architecture} · ${META.sae.n_latents.toLocaleString()} latents · ${META.model} @ ${META.hookpoint}`;
    document.title = `${META.sae.name} · saekit browser`;
  } catch (e) { app.replaceChildren(errorBox(e)); return; }
  window.addEventListener("hashchange", route);
  route();
})();
