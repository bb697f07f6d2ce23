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
const eventRows = new Map(); // "<stream>/<seq>" -> its table row (kept, so a playing clip is never rebuilt)

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
    const row = eventRows.get(`${gone.stream}/${gone.seq}`);
    if (row) row.remove();
    eventRows.delete(`${gone.stream}/${gone.seq}`);
  }
  showEvent(event);
}

function addCall(call) {
  model.calls.delete(call.call);
  model.calls.set(call.call, call);
  if (model.calls.size > CALLS_KEPT) model.calls.delete(model.calls.keys().next().value);
}

// ---- the view --------------------------------------------------------------------------------------
function showEvent(event) {
  const row = el("tr", `edge edge-${event.kind === "start" ? "start" : "end"}`);
  row.dataset.stream = event.stream;
  row.dataset.seq = String(event.seq);
  row.append(el("td", "muted", clock(event.time_utc)), el("td", "", event.stream), el("td", "muted", event.kind));
  row.append(el("td", "label", event.label), el("td", "num", fixed(event.score, 3)));
  const clip = el("td", "clip");
  if (event.clip) {
    const audio = el("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = clipUrl(event.clip);
    clip.append(audio);
  }
  row.append(clip);
  document.getElementById("events").prepend(row);
  eventRows.set(`${event.stream}/${event.seq}`, row);
  document.getElementById("events-table").hidden = false;
  document.getElementById("no-events").hidden = true;
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

function renderCalls() {
  const calls = [...model.calls.values()].reverse();
  document.getElementById("calls-section").hidden = calls.length === 0;
  document.getElementById("calls").replaceChildren(
    ...calls.map((call) => {
      const row = el("tr");
      row.dataset.call = call.call;
      const decision = DECISIONS.has(call.decision) ? call.decision : "none";
      row.append(el("td", "", call.call), el("td", "muted", call.protocol));
      row.append(el("td", `decision decision-${decision}`, call.decision), el("td", "num", fixed(call.score, 3)));
      row.append(el("td", "num", call.segments), el("td", "muted", call.final ? "final" : "running"));
      return row;
    }),
  );
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

// ---- the review: verdicts on saved detections, Apply and Undo (writes need a login) -------------------
const session = { writes: "disabled", loggedIn: false, csrf: null };
const review = { state: null, cards: new Map(), offline: false }; // clip path -> its card's elements
const VERDICT_TEXT = { right: "right", wrong: "wrong (recorded)", relabel: "this is", new: "new class" };

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(`${response.status}: ${(await response.text()).trim()}`);
  return response.json();
}

// Every write: JSON, the session cookie (same origin) and the session's CSRF token in a header.
async function write(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
    body: JSON.stringify(body || {}),
  });
  const text = await response.text();
  if (!response.ok) {
    const error = new Error(`${response.status}: ${text.trim()}`);
    error.status = response.status;
    error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
    if (response.status === 403 && session.loggedIn && path !== "/api/login") loadSession(); // calmd forgot it
    throw error;
  }
  return JSON.parse(text);
}

function note(text, bad) {
  const node = document.getElementById("review-note");
  node.textContent = text;
  node.className = bad ? "error" : "muted";
}

async function loadSession() {
  try {
    const info = await getJson("/api/session");
    session.writes = info.writes;
    session.loggedIn = Boolean(info.logged_in);
    session.csrf = info.csrf || null;
    session.why = info.why || "";
  } catch (error) {
    session.loggedIn = false;
  }
  renderSession();
}

function renderSession() {
  const state = document.getElementById("auth-state");
  const enabled = session.writes === "enabled";
  document.getElementById("login-form").hidden = !enabled || session.loggedIn;
  document.getElementById("logout").hidden = !session.loggedIn;
  const wasLoggedIn = state.textContent === "logged in";
  state.textContent = !enabled ? "read-only" : session.loggedIn ? "logged in" : "";
  if (wasLoggedIn && !session.loggedIn) loginError("your session has ended (calmd restarted?): log in again");
  state.title = session.why || "";
  renderReview();
}

// Login feedback stays next to the form: a wrong password, or the lockout with its countdown.
let lockTimer = null;
function loginError(text) {
  document.getElementById("login-error").textContent = text;
}
function lockedOut(seconds) {
  const button = document.getElementById("login");
  clearInterval(lockTimer);
  let left = Math.max(1, Math.ceil(seconds));
  const tick = () => {
    if (left <= 0) {
      clearInterval(lockTimer);
      button.disabled = false;
      loginError("");
      return;
    }
    button.disabled = true;
    loginError(`too many failed logins: try again in ${left} s`);
    left -= 1;
  };
  tick();
  lockTimer = setInterval(tick, 1000);
}

document.getElementById("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("password");
  const password = input.value;
  input.value = ""; // never left in the page, whatever the answer
  try {
    const reply = await write("/api/login", { password });
    session.loggedIn = true;
    session.csrf = reply.csrf;
    loginError("");
  } catch (error) {
    if (error.status === 429) lockedOut(error.retryAfter || 10);
    else if (error.status === 401) loginError("wrong password");
    else loginError(error instanceof TypeError ? "calmd is not reachable" : error.message);
    input.focus();
  }
  renderSession();
});

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await write("/api/logout", {});
  } catch (error) {
    note(`logout: ${error.message}`, true);
  }
  await loadSession();
  loginError(""); // ended on purpose
});

let reviewTimer = null;
async function loadReview() {
  clearTimeout(reviewTimer);
  const wasOffline = review.offline;
  try {
    review.state = await getJson("/api/review");
    review.offline = false;
  } catch (error) {
    // calmd stopped or restarted: what it said last (a job running, say) no longer holds
    review.offline = error instanceof TypeError;
    if (!review.offline) note(`review: ${error.message}`, true);
  }
  if (wasOffline && !review.offline) await loadSession(); // a restarted calmd has forgotten every session
  renderReview();
  const running = review.state && review.state.job && review.state.job.state === "running";
  const unpictured = review.state && (review.state.detections || []).some((d) => !d.picture);
  reviewTimer = setTimeout(loadReview, review.offline ? 2000 : running ? 1000 : unpictured ? 3000 : 15000);
}

async function send(clip, verdict, label) {
  try {
    await write("/api/review/verdict", { clip, verdict, label: label || null });
    note("", false);
  } catch (error) {
    note(`${clip}: ${error.message}`, true);
  }
  await loadReview();
}

async function job(action) {
  try {
    await write(`/api/review/${action}`, {});
  } catch (error) {
    note(`${action}: ${error.message}`, true);
  }
  await loadReview();
}
document.getElementById("apply").addEventListener("click", () => job("apply"));
document.getElementById("undo").addEventListener("click", () => job("undo"));

function detectionCard(d, labels) {
  let c = review.cards.get(d.clip);
  if (!c) {
    c = { root: el("article", "detection"), picture: el("div", "picture"), verdict: el("p", "verdict") };
    c.root.dataset.clip = d.clip;
    const head = el("header");
    head.append(el("span", "label", d.label), el("span", "num", fixed(d.score, 3)));
    head.append(el("span", "muted", d.stream), el("span", "muted", clock(d.start_utc)));
    const audio = el("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = clipUrl(d.clip);
    c.controls = el("div", "controls");
    c.root.append(head, c.picture, audio, c.verdict, c.controls);
    review.cards.set(d.clip, c);
  }
  if (d.picture && !c.picture.firstChild) {
    const img = el("img");
    img.alt = `spectrogram of ${d.clip}`;
    img.src = clipUrl(d.picture);
    c.picture.append(img);
  }
  const v = d.verdict;
  c.verdict.textContent = v
    ? `${VERDICT_TEXT[v.kind] || v.kind}${v.label && v.kind !== "right" ? ` ${v.label}` : ""} · ` +
      (v.state === "applied" ? `applied in ${v.version}` : v.state)
    : "";
  c.verdict.className = `verdict ${v ? `verdict-${v.state}` : ""}`;
  c.root.dataset.verdict = v ? `${v.kind}:${v.label || ""}:${v.state}` : "";
  renderControls(c, d, labels);
  return c.root;
}

function renderControls(c, d, labels) {
  const key = `${session.loggedIn}|${labels.join(",")}|${d.verdict ? d.verdict.state : ""}`;
  if (c.controlsKey === key) return; // kept while unchanged: a half-typed class name is not wiped
  c.controlsKey = key;
  const locked = !session.loggedIn || (d.verdict && d.verdict.state === "applied");
  const button = (text, cls, onClick) => {
    const b = el("button", cls, text);
    b.type = "button";
    b.disabled = locked;
    b.addEventListener("click", onClick);
    return b;
  };
  const select = el("select", "relabel-class");
  select.disabled = locked;
  for (const label of labels.filter((l) => l !== d.label)) select.append(el("option", "", label));
  const input = el("input", "new-class");
  input.placeholder = "new class";
  input.disabled = locked;
  c.controls.replaceChildren(
    button("right", "right", () => send(d.clip, "right")),
    button("wrong", "wrong", () => send(d.clip, "wrong")),
    select,
    button("this is", "relabel", () => send(d.clip, "relabel", select.value)),
    input,
    button("new class", "new", () => send(d.clip, "new", input.value.trim())),
    button("clear", "clear", () => send(d.clip, "clear")),
  );
}

function renderReview() {
  const s = review.state;
  if (!s) return;
  const section = document.getElementById("review-section");
  section.hidden = s.enabled === false;
  const labels = (s.classifier && s.classifier.labels) || [];
  document.getElementById("review-classifier").textContent = s.classifier
    ? `serving ${s.current || s.classifier.name} (${labels.join(", ")})`
    : s.why || "";
  const pending = Object.entries(s.pending || {}).map(([c, n]) => `${n} to ${c}`);
  const waiting = Object.entries(s.waiting || {}).map(([c, n]) => `${c} needs ${s.min_clips - n} more`);
  document.getElementById("review-pending").textContent =
    (pending.length ? `pending: ${pending.join(", ")}` : "nothing pending") +
    (waiting.length ? ` · new classes need ${s.min_clips} clips: ${waiting.join(", ")}` : "");
  const running = s.job && s.job.state === "running";
  const blocked = !session.loggedIn || running || review.offline;
  document.getElementById("apply").disabled = blocked || pending.length === 0;
  document.getElementById("undo").disabled = blocked || !s.undo_to;
  const jobNode = document.getElementById("review-job");
  if (review.offline) {
    jobNode.textContent = "calmd is not reachable: retrying" + (running ? ` (its ${s.job.action} was running)` : "");
    jobNode.className = "job job-offline";
  } else {
    jobNode.textContent = s.job ? `${s.job.action}: ${s.job.state}${s.job.message ? ` · ${s.job.message}` : ""}` : "";
    jobNode.className = `job ${s.job ? `job-${s.job.state}` : ""}`;
  }
  jobNode.dataset.classifier = (s.job && s.job.classifier) || "";
  const detections = s.detections || [];
  const shown = new Set(detections.map((d) => d.clip));
  for (const [clip, c] of review.cards) {
    if (!shown.has(clip)) {
      c.root.remove();
      review.cards.delete(clip);
    }
  }
  const container = document.getElementById("detections");
  detections.forEach((d, n) => {
    const root = detectionCard(d, labels);
    if (container.children[n] !== root) container.insertBefore(root, container.children[n] || null);
  });
}

connect();
loadSession();
loadReview();
