// The naming app's page: talks only to the JSON API of the same server (Contract 3).
// Every text a person or the data supplies goes in through textContent, never as HTML.
"use strict";

const state = { people: null, selected: new Set(), faces: new Set(), person: null, questions: null, focus: 0 };
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function faceImg(id, extra = {}) {
  return el("img", { src: `/api/faces/${encodeURIComponent(id)}/image`, alt: `face ${id}`, loading: "lazy", ...extra });
}

function pct(x) { return `${Math.round(100 * x)}%`; }

let toastTimer = null;
function toast(message, error = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, error ? 6000 : 2500);
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok) throw new Error(data.error || `${res.status}`);
  return data;
}

async function act(path, body, message) {
  try {
    const out = await api(path, body);
    toast(message || "saved");
    await render();
    return out;
  } catch (e) {
    toast(e.message, true);
    return null;
  }
}

// ------------------------------------------------------------------ people page
function matches(p) {
  const q = $("#search").value.trim().toLowerCase();
  return !q || (p.name || "").toLowerCase().includes(q);
}

function nameForm(placeholder, value, onName) {
  const input = el("input", { type: "text", placeholder, value: value || "", "aria-label": placeholder, class: "name-input" });
  return el("form", { class: "name-form", onsubmit: (ev) => { ev.preventDefault(); if (input.value.trim()) onName(input.value); } },
    input, el("button", { type: "submit", text: "Name" }));
}

function card(p) {
  const open = () => { location.hash = `#/person/${p.cluster}`; };
  const title = el("h3", {}, p.name ? el("span", { class: "name", text: p.name }) : el("span", { class: "name unnamed", text: "unnamed" }),
    el("span", { class: "conf", text: p.name ? pct(p.confidence) : "" }));
  const c = el("article", { class: "card" + (state.selected.has(p.cluster) ? " selected" : ""), tabindex: "0",
      "data-cluster": String(p.cluster) },
    el("div", { class: "thumbs", onclick: open, title: "open" }, ...p.sample.map((id) => faceImg(id))),
    title,
    el("div", { class: "meta", text: `${p.faces} face${p.faces === 1 ? "" : "s"} · ${p.named} named` }),
    el("label", { class: "meta" }, el("input", { type: "checkbox", class: "pick", checked: state.selected.has(p.cluster),
      onchange: (ev) => { ev.target.checked ? state.selected.add(p.cluster) : state.selected.delete(p.cluster); renderPeopleBar(); c.classList.toggle("selected", ev.target.checked); } }), " select to merge"),
    nameForm("Name this person", p.name, (name) => act("/api/name", { cluster: p.cluster, name }, `named ${name}`)));
  c.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && ev.target === c) open(); });
  return c;
}

function renderPeopleBar() {
  const bar = $("#people-bar");
  if (!bar) return;
  bar.replaceChildren(
    el("button", { id: "merge", disabled: state.selected.size < 2, title: "Merge the selected people (m)",
      text: `Merge selected (${state.selected.size})`, onclick: mergeSelected }),
    el("button", { text: "Clear selection", disabled: state.selected.size === 0,
      onclick: () => { state.selected.clear(); render(); } }));
}

async function mergeSelected() {
  if (state.selected.size < 2) return toast("select two people (or more) to merge", true);
  const clusters = [...state.selected];
  state.selected.clear();
  await act("/api/merge", { clusters }, "merged");
}

async function renderPeople(view) {
  const data = await api("/api/people");
  state.people = data;
  const grid = el("div", { class: "grid", id: "people" }, ...data.people.filter(matches).map(card));
  view.replaceChildren(el("div", { class: "bar", id: "people-bar" }), grid);
  renderPeopleBar();
  const cards = grid.querySelectorAll(".card");
  if (cards.length && document.activeElement === document.body) cards[Math.min(state.focus, cards.length - 1)].focus({ preventScroll: true });
}

// ------------------------------------------------------------------ person page
function faceFigure(f) {
  const fig = el("figure", { class: "face" + (state.faces.has(f.id) ? " selected" : ""), "data-id": f.id, tabindex: "0",
      title: `${f.id}${f.name ? ": " + f.name + " (" + f.source + ", " + pct(f.confidence) + ")" : ""}` },
    faceImg(f.id),
    el("figcaption", {}, f.name ? el("span", { text: f.name }) : el("span", { class: "unnamed", text: "unnamed" }),
      el("span", { class: "src", text: f.name ? ` ${f.source === "given" ? "✓" : pct(f.confidence)}` : "" })));
  const toggle = () => {
    state.faces.has(f.id) ? state.faces.delete(f.id) : state.faces.add(f.id);
    fig.classList.toggle("selected", state.faces.has(f.id));
    renderPersonBar();
  };
  fig.addEventListener("click", toggle);
  fig.addEventListener("keydown", (ev) => { if (ev.key === "Enter") toggle(); });
  return fig;
}

function renderPersonBar() {
  const bar = $("#person-bar");
  const p = state.person;
  if (!bar || !p) return;
  const n = state.faces.size;
  const faces = () => [...state.faces];
  const sel = nameForm("Name the selected faces", "", (name) => act("/api/name", { faces: faces(), name }, `named ${n} face(s) ${name}`)
    .then(() => state.faces.clear()));
  sel.id = "name-selected";
  bar.replaceChildren(
    el("span", { class: "meta", text: `${n} selected` }),
    el("button", { id: "not-person", disabled: !n || !p.name, title: "Not this person: remove the selected faces (x)",
      text: p.name ? `Not ${p.name}` : "Not this person", onclick: notPerson }),
    el("button", { id: "split", disabled: !n, title: "The selected faces leave this person (s)", text: "Split out", onclick: splitOut }),
    el("button", { text: "Select all", onclick: selectAll }),
    el("button", { text: "Clear", disabled: !n, onclick: () => { state.faces.clear(); render(); } }),
    ...(n ? [sel] : []));
}

function selectAll() {
  for (const t of state.person.tracks) for (const f of t.faces) state.faces.add(f.id);
  document.querySelectorAll(".face").forEach((x) => x.classList.add("selected"));
  renderPersonBar();
}

async function notPerson() {
  const p = state.person;
  if (!state.faces.size || !p.name) return toast("select faces of a named person first", true);
  const faces = [...state.faces];
  state.faces.clear();
  await act("/api/not", { faces, name: p.name }, `${faces.length} face(s) are not ${p.name}`);
}

async function splitOut() {
  if (!state.faces.size) return toast("select the faces that leave", true);
  const faces = [...state.faces];
  state.faces.clear();
  await act("/api/split", { faces }, `${faces.length} face(s) split out`);
}

async function renderPerson(view, cluster) {
  let p;
  try { p = await api(`/api/people/${encodeURIComponent(cluster)}`); } catch (e) {
    view.replaceChildren(el("p", { text: e.message }), el("a", { href: "#/", text: "back to the people" }));
    return;
  }
  if (!state.person || state.person.cluster !== p.cluster) state.faces.clear();
  state.person = p;
  const head = el("div", { class: "bar" },
    el("a", { href: "#/", text: "← people" }),
    el("h2", {}, p.name ? el("span", { class: "name", text: p.name }) : el("span", { class: "name unnamed", text: "unnamed" }),
      el("span", { class: "meta", text: ` ${p.faces} faces · ${p.named} named${p.name ? " · " + pct(p.confidence) : ""}` })),
    nameForm("Name this person", p.name, (name) => act("/api/name", { cluster: p.cluster, name }, `named ${name}`)));
  head.querySelector("form").id = "name-person";
  const tracks = p.tracks.map((t, k) => el("section", { class: "track" },
    el("h4", {}, el("span", { text: t.track ? `track ${String(t.track).split("#").pop()}` : "faces without a track" }),
      el("span", { class: "meta", text: `${t.faces.length} face(s)` }),
      nameForm("Name this track", "", (name) => act("/api/name", { faces: t.faces.map((f) => f.id), name }, `track named ${name}`))),
    el("div", { class: "faces" }, ...t.faces.map(faceFigure))));
  view.replaceChildren(head, el("div", { class: "bar", id: "person-bar" }), ...tracks);
  renderPersonBar();
}

// ------------------------------------------------------------------ questions page
async function renderQuestions(view) {
  const strategy = $("#strategy")?.value || "clusters";
  const q = await api(`/api/suggestions?strategy=${encodeURIComponent(strategy)}&n=8&pairs=4`);
  state.questions = q;
  const pick = el("select", { id: "strategy", onchange: () => render() },
    ...["clusters", "margin", "breadth", "random"].map((s) => el("option", { value: s, selected: s === strategy, text: s })));
  const pairs = q.questions.map((x) => el("div", { class: "question pair" },
    el("a", { href: `#/person/${x.cluster}` }, faceImg(x.id)), el("a", { href: `#/person/${x.cluster2}` }, faceImg(x.id2)),
    el("span", { class: "why", text: x.reason }),
    el("button", { class: "same", text: "Same (y)", onclick: () => act("/api/answer", { faces: [x.id, x.id2], answer: "same" }, "same person") }),
    el("button", { class: "different", text: "Different (d)", onclick: () => act("/api/answer", { faces: [x.id, x.id2], answer: "different" }, "different people") })));
  const names = q.faces.map((x) => el("div", { class: "question suggestion" },
    el("a", { href: `#/person/${x.cluster}` }, faceImg(x.id)),
    el("span", { class: "why", text: `${x.reason}${x.name ? " · now: " + x.name : ""}` }),
    nameForm("Who is this?", "", (name) => act("/api/name", { faces: [x.id], name }, `named ${name}`))));
  view.replaceChildren(
    el("h2", { text: "Are these the same person?" }), ...(pairs.length ? pairs : [el("p", { class: "meta", text: "no question left" })]),
    el("div", { class: "bar" }, el("h2", { text: "Who is this? Next suggestions by" }), pick),
    ...(names.length ? names : [el("p", { class: "meta", text: "no suggestion left" })]));
}

// ------------------------------------------------------------------ update, export, undo
async function pollUpdate() {
  const box = $("#status");
  box.hidden = false;
  for (;;) {
    const job = await api("/api/update");
    $("#progress").value = job.progress;
    $("#status-text").textContent = job.error ? `${job.message}: ${job.error}` : job.message;
    box.dataset.state = job.state;
    if (job.state !== "running") {
      $("#update").disabled = false;
      if (job.state === "failed") toast(job.error || "update failed", true);
      await render();
      return job;
    }
    await new Promise((r) => setTimeout(r, 400));
  }
}

async function startUpdate() {
  const body = { retrain: $("#retrain").checked, budget: Number($("#budget").value) || 60 };
  try {
    await api("/api/update", body);
  } catch (e) { return toast(e.message, true); }
  $("#update").disabled = true;
  return pollUpdate();
}

async function doExport() {
  const out = await act("/api/export", {}, "exporting…");
  if (out) toast(`exported ${out.faces} faces (${out.named} named, ${out.names} names) to ${out.folder}`);
}

// ------------------------------------------------------------------ routing, keys
async function render() {
  const view = $("#view");
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/person/")) await renderPerson(view, decodeURIComponent(hash.slice(9)));
    else if (hash.startsWith("#/questions")) await renderQuestions(view);
    else await renderPeople(view);
    const p = hash.startsWith("#/person/") || hash.startsWith("#/questions") ? await api("/api/people") : state.people;
    state.people = p;
    $("#counts").textContent = `${p.named} of ${p.faces} faces named` + (p.stale ? " · names out of date: Update" : "");
  } catch (e) { toast(e.message, true); }
}

function focusCard(step) {
  const cards = [...document.querySelectorAll(".card")];
  if (!cards.length) return;
  const at = cards.indexOf(document.activeElement);
  state.focus = Math.max(0, Math.min(cards.length - 1, (at < 0 ? -step : at) + step));
  cards[state.focus].focus();
}

function onKey(ev) {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(ev.target.tagName);
  if (ev.key === "Escape") {
    if (typing) ev.target.blur();
    else if (state.faces.size || state.selected.size) { state.faces.clear(); state.selected.clear(); render(); }
    else if (location.hash.startsWith("#/person/")) location.hash = "#/";
    return;
  }
  if (typing || ev.altKey || ev.metaKey || (ev.ctrlKey && ev.key !== "z")) return;
  const onPerson = location.hash.startsWith("#/person/");
  const cardEl = document.activeElement?.closest?.(".card");
  const keys = {
    "/": () => $("#search").focus(),
    "?": () => $("#help").showModal(),
    "j": () => focusCard(1), "k": () => focusCard(-1),
    "g": () => { location.hash = "#/"; }, "q": () => { location.hash = "#/questions"; },
    "z": () => act("/api/undo", {}, "undone"),
    "u": () => startUpdate(), "e": () => doExport(),
    "m": () => mergeSelected(),
    "x": () => onPerson && notPerson(), "s": () => onPerson && splitOut(), "a": () => onPerson && selectAll(),
    "n": () => {
      const input = onPerson ? ($("#name-selected input") || $("#name-person input")) : cardEl?.querySelector(".name-input");
      input?.focus();
    },
    " ": () => { if (cardEl) { const box = cardEl.querySelector(".pick"); box.checked = !box.checked; box.dispatchEvent(new Event("change")); } },
    "y": () => $(".question.pair .same")?.click(), "d": () => $(".question.pair .different")?.click(),
  };
  const fn = keys[ev.key];
  if (fn) { ev.preventDefault(); fn(); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search").addEventListener("input", () => { if (!location.hash.startsWith("#/person/") && location.hash !== "#/questions") render(); else location.hash = "#/"; });
  $("#undo").addEventListener("click", () => act("/api/undo", {}, "undone"));
  $("#update").addEventListener("click", startUpdate);
  $("#export").addEventListener("click", doExport);
  $("#help-button").addEventListener("click", () => $("#help").showModal());
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => { state.focus = 0; render(); });
  render();
  api("/api/update").then((job) => { if (job.state === "running") pollUpdate(); });
});
