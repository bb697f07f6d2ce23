// calmd's live page. Everything shown comes from /events (Server-Sent Events): a `state` snapshot on every
// (re)connection, then each message calmd publishes, named by its kind. Stream ids, labels and call ids come
// from the configuration and the classifier, so every text goes through textContent, never innerHTML.
"use strict";

const LABELS_PER_STREAM = 20;
const EVENTS_KEPT = 100;
const CALLS_KEPT = 100;
const STREAMS_KEPT = 256; // as the server: call legs come and go, the least recently heard stream is forgotten
const STATES = new Set(["connecting", "live", "backoff", "failed", "finished", "stopped"]);
const DECISIONS = new Set(["positive", "negative", "none"]);

const model = { status: null, labels: new Map(), events: [], calls: new Map() };
const cards = new Map(); // stream id -> its card's elements
const eventRows = new Map(); // "<stream>|<label>|<start_s>" -> its row (kept: a playing clip is never rebuilt)

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clock(utc) {
  const t = new Date(utc);
  return Number.isNaN(t.getTime()) ? "" : t.toLocaleTimeString();
}

function fixed(x, digits) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "";
}

function bar(score) {
  const outer = el("div", "bar");
  const fill = el("div", "bar-fill");
  fill.style.width = `${(Math.max(0, Math.min(1, Number(score) || 0)) * 100).toFixed(1)}%`;
  outer.append(fill);
  return outer;
}

// A clip path is relative to the clips folder, with "/" separators: each part is URL-encoded on its own.
function clipUrl(path) {
  return "/clips/" + String(path).split("/").map(encodeURIComponent).join("/");
}

// ---- the model -------------------------------------------------------------------------------------
function load(snapshot) {
  model.status = snapshot.status;
  model.labels = new Map(Object.entries(snapshot.labels || {}));
  model.events = (snapshot.events || []).slice(-EVENTS_KEPT);
  model.calls = new Map((snapshot.calls || []).map((c) => [c.call, c]));
  for (const row of eventRows.values()) row.remove();
  eventRows.clear();
  for (const event of model.events) showEvent(event);
}

function addLabel(label) {
  const history = model.labels.get(label.stream) || [];
  history.push(label);
  if (history.length > LABELS_PER_STREAM) history.shift();
  model.labels.delete(label.stream); // re-inserted last: the map's order is least recently heard first
  model.labels.set(label.stream, history);
  for (const stream of model.labels.keys()) {
    if (model.labels.size <= STREAMS_KEPT) break;
    model.labels.delete(stream);
  }
}

function addEvent(event) {
  model.events.push(event);
  if (model.events.length > EVENTS_KEPT) {
    const gone = model.events.shift();
    const key = eventKey(gone);
    if (!model.events.some((e) => eventKey(e) === key)) {
      const row = eventRows.get(key);
      if (row) row.remove();
      eventRows.delete(key);
    }
  }
  showEvent(event);
}

function addCall(call) {
  model.calls.delete(call.call);
  model.calls.set(call.call, call);
  if (model.calls.size > CALLS_KEPT) model.calls.delete(model.calls.keys().next().value);
}

// ---- the view --------------------------------------------------------------------------------------
// One row per event: its start, and its end (with the clip) once it has ended.
function eventKey(event) {
  return `${event.stream}|${event.label}|${event.start_s}`;
}

function showEvent(event) {
  const key = eventKey(event);
  let row = eventRows.get(key);
  if (!row) {
    row = el("tr", "edge edge-start");
    row.dataset.stream = event.stream;
    row.append(el("td", "muted start", clock(event.time_utc)), el("td", "muted end", "…"));
    row.append(el("td", "", event.stream), el("td", "label", event.label), el("td", "num score"), el("td", "clip"));
    document.getElementById("events").prepend(row);
    eventRows.set(key, row);
  }
  row.dataset.seq = String(event.seq); // the latest edge's: the end's once ended
  row.querySelector(".score").textContent = fixed(event.score, 3);
  if (event.kind === "end") {
    row.className = "edge edge-end";
    row.querySelector(".end").textContent = clock(event.time_utc);
    if (event.clip && !row.querySelector("audio")) {
      const audio = el("audio");
      audio.controls = true;
      audio.preload = "metadata"; // the player shows the clip's duration
      audio.src = clipUrl(event.clip);
      row.querySelector(".clip").append(audio);
    }
  }
  document.getElementById("events-table").hidden = false;
  document.getElementById("no-events").hidden = true;
}

// What the model was torn between: its best classes with their scores, as [{label, score}].
function topList(top) {
  const list = el("span", "top");
  for (const t of top || []) list.append(el("span", "top-item", `${t.label} ${fixed(t.score, 2)}`));
  return list;
}

function card(stream) {
  let c = cards.get(stream);
  if (c) return c;
  c = {
    root: el("article", "stream"),
    state: el("span", "state"),
    label: el("span", "current-label"),
    score: el("span", "current-score num"),
    bar: el("div", "bar-slot"),
    stats: el("p", "stats muted"),
    list: el("ol", "labels"),
  };
  c.root.dataset.stream = stream;
  const head = el("header");
  head.append(el("h3", "", stream), c.state);
  const current = el("div", "current");
  current.append(c.label, c.score);
  c.root.append(head, current, c.bar, c.stats, c.list);
  cards.set(stream, c);
  return c;
}

function renderStream(stream, status, history) {
  const c = card(stream);
  const state = status ? status.state : "";
  c.state.textContent = state || "no status yet";
  c.state.className = `state state-${STATES.has(state) ? state : "other"}`;
  const last = history[history.length - 1];
  c.label.textContent = last ? last.label : "-";
  c.label.classList.toggle("unknown", Boolean(last && last.unknown));
  c.score.textContent = last ? fixed(last.score, 3) : "";
  c.bar.replaceChildren(bar(last ? last.score : 0));
  c.stats.textContent = status
    ? `segments ${status.segments} · dropped ${status.dropped} · failed ${status.failed}` +
      (status.rtf !== null ? ` · rtf ${fixed(status.rtf, 3)}` : "") +
      (status.last_error ? ` · last error: ${status.last_error}` : "")
    : "";
  c.list.replaceChildren(
    ...history
      .slice()
      .reverse()
      .map((label) => {
        const item = el("li", label.unknown ? "unknown" : "");
        item.dataset.seq = String(label.seq);
        item.append(el("span", "muted", clock(label.end_utc)), el("span", "label", label.label));
        item.append(el("span", "num", fixed(label.score, 3)), bar(label.score));
        item.append(topList(label.top));
        if (label.unknown) item.title = `best guess: ${label.best}`;
        return item;
      }),
  );
}

function render() {
  const status = model.status;
  document.getElementById("instance").textContent = status ? status.instance : "";
  const classifier = document.getElementById("classifier");
  classifier.textContent = status ? `classifier ${status.classifier} · ${String(status.fingerprint).slice(0, 12)}` : "";
  classifier.title = status ? `classifier file sha256 ${status.fingerprint}` : "";
  const statuses = (status && status.streams) || {};
  const ids = [...new Set([...Object.keys(statuses), ...model.labels.keys()])].sort();
  for (const [stream, c] of cards) {
    if (!ids.includes(stream)) {
      c.root.remove();
      cards.delete(stream);
    }
  }
  const container = document.getElementById("streams");
  ids.forEach((stream, n) => {
    renderStream(stream, statuses[stream], model.labels.get(stream) || []);
    const root = cards.get(stream).root;
    if (container.children[n] !== root) container.insertBefore(root, container.children[n] || null);
  });
  document.getElementById("no-streams").hidden = ids.length > 0;
  renderCalls();
}

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  setTimeout(() => {
    scheduled = false;
    render();
  }, 50);
}

// ---- the connection --------------------------------------------------------------------------------
function setConnection(text, kind) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.className = `connection ${kind}`;
}

function connect() {
  const source = new EventSource("/events");
  const on = (name, handle) =>
    source.addEventListener(name, (message) => {
      handle(JSON.parse(message.data));
      schedule();
    });
  on("state", load);
  on("status", (status) => (model.status = status));
  on("label", addLabel);
  on("event", (event) => {
    addEvent(event);
    if (event.kind === "end" && event.clip) loadReview(); // a new saved detection to review
  });
  on("call", addCall);
  source.onopen = () => {
    setConnection("live", "live");
    loadSession(); // on every (re)connection: a restarted calmd holds no session from before
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (e.g. 503: page.max_clients browsers already watching): EventSource gives up, so try later.
      setConnection("refused, retrying", "down");
      setTimeout(connect, 10000);
    } else {
      setConnection("reconnecting", "down");
    }
  };
}

// ---- tabs: one section at a time, named in the address (#live, #review, #calls, #versions) ---------------
const TABS = ["live", "review", "calls", "versions"];
function showTab() {
  const wanted = location.hash.slice(1);
  const tab = TABS.includes(wanted) ? wanted : "live";
  for (const node of document.querySelectorAll("main > [data-tab]")) node.classList.toggle("tab-off", node.dataset.tab !== tab);
  for (const link of document.querySelectorAll("nav.tabs a")) link.classList.toggle("active", link.dataset.tab === tab);
  document.body.dataset.tab = tab;
}
window.addEventListener("hashchange", showTab);
showTab();
connect();
