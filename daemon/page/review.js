// The review: one page of saved detections (filtered and paged by calmd), each with what the model was torn
// between, its spectrogram and its player, and verdicts by button, by keyboard or in bulk.
"use strict";

const review = {
  state: null,
  offline: false,
  cards: new Map(), // clip path -> its card's elements
  filters: {},
  anchor: null, // the newest clip listed: newer ones wait behind the "N new" button, nothing moves
  offset: 0,
  limit: 50,
  focus: 0, // index of the card the keyboard acts on
  selected: new Set(),
};
const VERDICT_TEXT = { right: "right", wrong: "wrong (recorded)", relabel: "this is", new: "new class" };
const FMIN = 40;
const FMAX = 8000; // calmd.outputs.spectrogram's mel range, for the frequency axis

function query() {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(review.filters)) if (value) params.set(key, value);
  if (review.anchor) params.set("anchor", review.anchor);
  params.set("offset", String(review.offset));
  params.set("limit", String(review.limit));
  return params.toString();
}

let reviewTimer = null;
async function loadReview() {
  clearTimeout(reviewTimer);
  const wasOffline = review.offline;
  try {
    review.state = await getJson(`/api/review?${query()}`);
    review.offline = false;
    const first = (review.state.detections || [])[0];
    if (!review.anchor && first && review.offset === 0) review.anchor = first.clip;
  } catch (error) {
    // calmd stopped or restarted: what it said last (a job running, say) no longer holds
    review.offline = error instanceof TypeError;
    if (!review.offline) note(`review: ${error.message}`, true);
  }
  if (wasOffline && !review.offline) await loadSession(); // a restarted calmd has forgotten every session
  renderReview();
  const s = review.state;
  const running = s && s.job && s.job.state === "running";
  const unpictured = s && (s.detections || []).some((d) => !d.picture);
  reviewTimer = setTimeout(loadReview, review.offline ? 2000 : running ? 1000 : unpictured ? 2000 : 10000);
}

function showNewest() {
  review.anchor = null;
  review.offset = 0;
  loadReview();
}

async function send(clips, verdict, label) {
  try {
    if (clips.length === 1) await write("/api/review/verdict", { clip: clips[0], verdict, label: label || null });
    else await write("/api/review/verdicts", { clips, verdict, label: label || null });
    note("", false);
  } catch (error) {
    note(`${clips.length === 1 ? clips[0] : `${clips.length} clips`}: ${error.message}`, true);
  }
  await loadReview();
}

// ---- a card -----------------------------------------------------------------------------------------
function melFraction(hz) {
  const mel = (f) => 2595 * Math.log10(1 + f / 700);
  return (mel(hz) - mel(FMIN)) / (mel(FMAX) - mel(FMIN));
}

// The spectrogram with a time axis (seconds from the clip's start), a frequency axis, and the labelled part
// marked apart from the pre- and post-roll.
function spectrogram(d) {
  const box = el("div", "spectrogram");
  const plot = el("div", "plot");
  const length = (d.clip_end_s || 0) - (d.clip_start_s || 0);
  if (!d.picture) {
    plot.append(el("div", "drawing muted", "drawing the spectrogram…"));
  } else {
    const img = el("img");
    img.alt = `spectrogram of ${d.clip}`;
    img.src = clipUrl(d.picture);
    plot.append(img);
  }
  if (length > 0 && typeof d.start_s === "number" && typeof d.end_s === "number") {
    const at = (t) => Math.max(0, Math.min(100, ((t - d.clip_start_s) / length) * 100));
    const pre = el("div", "roll");
    pre.style.left = "0";
    pre.style.width = `${at(d.start_s)}%`;
    const post = el("div", "roll");
    post.style.left = `${at(d.end_s)}%`;
    post.style.right = "0";
    const segment = el("div", "segment");
    segment.style.left = `${at(d.start_s)}%`;
    segment.style.width = `${at(d.end_s) - at(d.start_s)}%`;
    segment.title = `labelled ${d.label}: ${fixed(d.start_s - d.clip_start_s, 2)}–${fixed(d.end_s - d.clip_start_s, 2)} s`;
    plot.append(pre, segment, post);
    const axis = el("div", "time-axis");
    const step = [0.5, 1, 2, 5, 10, 30].find((s) => length / s <= 6) || 60;
    for (let t = 0; t <= length + 1e-9; t += step) {
      const tick = el("span", "tick", `${Number(t.toFixed(1))} s`);
      tick.style.left = `${(t / length) * 100}%`;
      axis.append(tick);
    }
    box.append(axis);
  }
  const freq = el("div", "freq-axis");
  for (const hz of [8000, 2000, 500, 100]) {
    const tick = el("span", "tick", hz >= 1000 ? `${hz / 1000}k` : String(hz));
    tick.style.bottom = `${melFraction(hz) * 100}%`;
    freq.append(tick);
  }
  box.prepend(freq, plot);
  return box;
}

function detectionCard(d, labels) {
  let c = review.cards.get(d.clip);
  if (!c) {
    c = { root: el("article", "detection"), verdict: el("p", "verdict"), controls: el("div", "controls") };
    c.root.dataset.clip = d.clip;
    c.root.tabIndex = -1;
    const head = el("header");
    c.select = el("input", "select");
    c.select.type = "checkbox";
    c.select.title = "select for a bulk verdict (x)";
    c.select.addEventListener("change", () => {
      if (c.select.checked) review.selected.add(d.clip);
      else review.selected.delete(d.clip);
      renderBulk();
    });
    head.append(c.select, el("span", "label", d.label), el("span", "num", fixed(d.score, 3)));
    head.append(el("span", "muted", d.stream), el("span", "muted", `${clock(d.start_utc)} ${day(d.start_utc)}`));
    c.top = topList(d.top);
    c.top.title = "what the model was torn between (the event's best segment)";
    c.picture = el("div", "picture");
    c.audio = el("audio");
    c.audio.controls = true;
    c.audio.preload = "metadata"; // the player shows the duration
    c.audio.src = clipUrl(d.clip);
    c.root.append(head, c.top, c.picture, c.audio, c.verdict, c.controls);
    c.root.addEventListener("click", (e) => {
      const index = (review.state.detections || []).findIndex((x) => x.clip === d.clip);
      if (!e.target.closest("button, select, input, audio") && index >= 0) focusCard(index);
    });
    review.cards.set(d.clip, c);
  }
  if (c.pictured !== Boolean(d.picture)) {
    c.pictured = Boolean(d.picture);
    c.picture.replaceChildren(spectrogram(d));
  }
  c.select.checked = review.selected.has(d.clip);
  c.select.disabled = !session.loggedIn;
  const v = d.verdict;
  c.verdict.textContent = v
    ? `${VERDICT_TEXT[v.kind] || v.kind}${v.label && v.kind !== "right" ? ` ${v.label}` : ""} · ` +
      (v.state === "applied" ? `applied in ${v.version}` : v.state)
    : "not reviewed";
  c.verdict.className = `verdict ${v ? `verdict-${v.state}` : "muted"}`;
  // Did teaching work? How the version it was taught in labels the clip now.
  if (v && v.state === "applied" && d.check) {
    const missed = d.check.label !== v.label;
    const check = el("span", missed ? "check check-missed" : "check check-ok",
      missed ? ` · ⚠ ${v.version} still labels it ${d.check.label} (${fixed(d.check.score, 2)})`
        : ` · ${v.version} labels it ${d.check.label} ✓`);
    c.verdict.append(check);
  }
  c.root.dataset.verdict = v ? `${v.kind}:${v.label || ""}:${v.state}` : "";
  renderControls(c, d, labels);
  return c.root;
}

function day(utc) {
  const t = new Date(utc);
  return Number.isNaN(t.getTime()) ? "" : t.toLocaleDateString();
}

function renderControls(c, d, labels) {
  const key = `${session.loggedIn}|${labels.join(",")}|${d.verdict ? d.verdict.state : ""}`;
  if (c.controlsKey === key) return; // kept while unchanged: a half-typed class name is not wiped
  c.controlsKey = key;
  const locked = !session.loggedIn || (d.verdict && d.verdict.state === "applied");
  const button = (text, cls, onClick, title) => {
    const b = el("button", cls, text);
    b.type = "button";
    b.disabled = locked;
    if (title) b.title = title;
    b.addEventListener("click", onClick);
    return b;
  };
  // No class is chosen until the reviewer chooses one: one click must not relabel.
  const select = el("select", "relabel-class");
  select.disabled = locked;
  const none = el("option", "", "this is…");
  none.value = "";
  select.append(none);
  labels.forEach((label, i) => {
    const option = el("option", "", `${i + 1} ${label}`);
    option.value = label;
    select.append(option);
  });
  const relabel = button("this is", "relabel", () => send([d.clip], "relabel", select.value));
  relabel.disabled = true;
  select.addEventListener("change", () => (relabel.disabled = locked || !select.value));
  const input = el("input", "new-class");
  input.placeholder = "new class";
  input.disabled = locked;
  c.controls.replaceChildren(
    button("right", "right", () => send([d.clip], "right"), "right (y)"),
    button("wrong", "wrong", () => send([d.clip], "wrong"), "wrong (n)"),
    select,
    relabel,
    input,
    button("new class", "new", () => send([d.clip], "new", input.value.trim())),
    button("clear", "clear", () => send([d.clip], "clear"), "clear (c)"),
  );
}

// ---- the list -----------------------------------------------------------------------------------------
function renderReview() {
  const s = review.state;
  if (!s) return;
  document.getElementById("review-section").hidden = s.enabled === false;
  const labels = (s.classifier && s.classifier.labels) || [];
  renderBar(s); // versions.js
  renderVersions(s);
  fillChoices(document.querySelector("#filters select[name=label]"), s.labels || [], review.filters.label);
  fillChoices(document.querySelector("#filters select[name=stream]"), s.streams || [], review.filters.stream);
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
  const total = s.total || 0;
  document.getElementById("review-range").textContent = total
    ? `${s.offset + 1}–${s.offset + detections.length} of ${total}`
    : "no detection matches";
  document.getElementById("tab-review-count").textContent = total ? String(total + (s.newer || 0)) : "";
  document.getElementById("page-prev").disabled = s.offset === 0;
  document.getElementById("page-next").disabled = s.offset + detections.length >= total;
  const newer = document.getElementById("review-new");
  newer.hidden = !s.newer;
  newer.textContent = `${s.newer} new`;
  review.focus = Math.min(review.focus, Math.max(0, detections.length - 1));
  markFocus(false);
  renderBulk();
}

function fillChoices(select, values, chosen) {
  const key = values.join("\u0000");
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  const any = el("option", "", "any");
  any.value = "";
  select.replaceChildren(any, ...values.map((v) => el("option", "", v)));
  select.value = chosen || "";
}

document.getElementById("filters").addEventListener("change", (e) => {
  const form = e.currentTarget;
  const data = new FormData(form);
  review.filters = {};
  for (const [key, value] of data.entries()) review.filters[key] = key === "unreviewed" ? "1" : String(value).trim();
  review.anchor = null;
  review.offset = 0;
  review.focus = 0;
  loadReview();
});
document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
document.getElementById("review-new").addEventListener("click", showNewest);
document.getElementById("page-prev").addEventListener("click", () => {
  review.offset = Math.max(0, review.offset - review.limit);
  review.focus = 0;
  loadReview();
});
document.getElementById("page-next").addEventListener("click", () => {
  review.offset += review.limit;
  review.focus = 0;
  loadReview();
});

// ---- bulk verdicts ------------------------------------------------------------------------------------
function renderBulk() {
  for (const clip of [...review.selected]) if (!review.cards.has(clip)) review.selected.delete(clip);
  const bar = document.getElementById("bulk");
  bar.hidden = review.selected.size === 0 || !session.loggedIn;
  document.getElementById("bulk-count").textContent = `${review.selected.size} selected:`;
  const labels = (review.state && review.state.classifier && review.state.classifier.labels) || [];
  const select = document.getElementById("bulk-class");
  if (select.dataset.key !== labels.join(",")) {
    select.dataset.key = labels.join(",");
    const none = el("option", "", "this is…");
    none.value = "";
    select.replaceChildren(none, ...labels.map((l) => el("option", "", l)));
  }
  document.getElementById("bulk-relabel").disabled = !select.value;
}
document.getElementById("bulk-class").addEventListener("change", renderBulk);
const bulk = (verdict, label) => async () => {
  const clips = [...review.selected];
  review.selected.clear();
  await send(clips, verdict, label && label());
};
document.getElementById("bulk-right").addEventListener("click", bulk("right"));
document.getElementById("bulk-wrong").addEventListener("click", bulk("wrong"));
document.getElementById("bulk-clear").addEventListener("click", bulk("clear"));
document.getElementById("bulk-relabel").addEventListener(
  "click",
  bulk("relabel", () => document.getElementById("bulk-class").value),
);
document.getElementById("bulk-none").addEventListener("click", () => {
  review.selected.clear();
  renderReview();
});

// ---- the keyboard -------------------------------------------------------------------------------------
function focusedDetection() {
  return ((review.state && review.state.detections) || [])[review.focus];
}

function markFocus(scroll) {
  const d = focusedDetection();
  for (const [clip, c] of review.cards) c.root.classList.toggle("focused", Boolean(d) && clip === d.clip);
  if (scroll && d) review.cards.get(d.clip).root.scrollIntoView({ block: "nearest" });
}

function focusCard(n) {
  const count = ((review.state && review.state.detections) || []).length;
  review.focus = Math.max(0, Math.min(count - 1, n));
  markFocus(true);
}

function judge(verdict, label) {
  const d = focusedDetection();
  if (!d || !session.loggedIn || (d.verdict && d.verdict.state === "applied")) return;
  if (!review.filters.unreviewed) focusCard(review.focus + 1); // with "unreviewed only" the next one moves up
  send([d.clip], verdict, label);
}

document.addEventListener("keydown", (e) => {
  const typing = e.target instanceof Element && e.target.closest("input, select, textarea");
  if (e.ctrlKey || e.metaKey || e.altKey || typing) return;
  if (document.body.dataset.tab !== "review") return;
  const help = document.getElementById("help");
  const labels = (review.state && review.state.classifier && review.state.classifier.labels) || [];
  const d = focusedDetection();
  if (e.key === "?") help.hidden = !help.hidden;
  else if (e.key === "Escape") help.hidden = true;
  else if (e.key === "j") focusCard(review.focus + 1);
  else if (e.key === "k") focusCard(review.focus - 1);
  else if (e.key === "y") judge("right");
  else if (e.key === "n") judge("wrong");
  else if (e.key === "c") judge("clear");
  else if (/^[1-9]$/.test(e.key) && labels[Number(e.key) - 1]) judge("relabel", labels[Number(e.key) - 1]);
  else if (e.key === "x" && d && session.loggedIn) {
    if (review.selected.has(d.clip)) review.selected.delete(d.clip);
    else review.selected.add(d.clip);
    renderReview();
  } else if (e.key === "p" && d) {
    const audio = review.cards.get(d.clip).audio;
    if (audio.paused) audio.play();
    else audio.pause();
  } else return;
  e.preventDefault();
});
document.getElementById("help-open").addEventListener("click", () => {
  const help = document.getElementById("help");
  help.hidden = !help.hidden;
});

loadSession();
loadReview();
