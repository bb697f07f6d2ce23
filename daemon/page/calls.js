// Calls: each call's verdict, its legs' segment scores and saved clips, and what to teach from a call the
// detector got wrong: "genuine" (its clips join a class outside the positive group) or "a new kind of attack"
// (its clips start a new class that joins the positive group).
"use strict";

const callCards = new Map(); // call id -> its card's elements

function callClips(call) {
  const legs = new Set((call.legs || []).map((l) => l.stream));
  return model.events.filter((e) => e.kind === "end" && e.clip && legs.has(e.stream)).map((e) => e.clip);
}

function callCard(call) {
  let c = callCards.get(call.call);
  if (c) return c;
  c = { root: el("article", "call"), head: el("header"), legs: el("div", "legs"), clips: el("div", "call-clips"),
    actions: el("div", "controls call-actions"), note: el("p", "muted call-note") };
  c.root.dataset.call = call.call;
  c.root.append(c.head, c.legs, c.clips, c.actions, c.note);
  callCards.set(call.call, c);
  return c;
}

function renderCalls() {
  const flaggedOnly = document.getElementById("calls-flagged").checked;
  const calls = [...model.calls.values()].reverse();
  const shown = calls.filter((call) => !flaggedOnly || call.decision === "positive");
  document.getElementById("no-calls").hidden = calls.length > 0;
  const flagged = calls.filter((call) => call.decision === "positive").length;
  document.getElementById("tab-calls-count").textContent = calls.length ? `${flagged}/${calls.length}` : "";
  for (const [id, c] of callCards) if (!model.calls.has(id)) (c.root.remove(), callCards.delete(id));
  const container = document.getElementById("calls");
  container.replaceChildren(...shown.map((call) => renderCall(call).root));
}

function renderCall(call) {
  const c = callCard(call);
  const decision = DECISIONS.has(call.decision) ? call.decision : "none";
  c.root.className = `call call-${decision}`;
  c.head.replaceChildren(
    el("h3", "", call.call),
    el("span", `decision decision-${decision}`, decision === "positive" ? `flagged: ${call.positive}` : call.decision),
    el("span", "num", `score ${fixed(call.score, 2)} (threshold ${fixed(call.threshold, 2)})`),
    el("span", "muted", `${call.protocol} · ${call.segments} segments · ${call.final ? "ended" : "running"}`),
  );
  // per leg: each labelled segment with its score and what the model was torn between
  c.legs.replaceChildren(
    ...(call.legs || []).map((leg) => {
      const box = el("div", "leg");
      box.dataset.stream = leg.stream;
      box.append(el("h4", "", `${leg.leg}${leg.scored ? "" : " (not scored)"} · log-odds ${fixed(leg.score, 2)}`));
      const list = el("ol", "labels");
      for (const label of model.labels.get(leg.stream) || []) {
        const item = el("li", label.unknown ? "unknown segment" : "segment");
        item.append(el("span", "muted", `${fixed(label.start_s, 1)} s`), el("span", "label", label.label));
        item.append(el("span", "num", fixed(label.score, 3)), bar(label.score), topList(label.top));
        list.append(item);
      }
      box.append(list);
      return box;
    }),
  );
  const clips = callClips(call);
  if (c.clipsKey !== clips.join("|")) {
    c.clipsKey = clips.join("|");
    c.clips.replaceChildren(
      ...clips.map((clip) => {
        const audio = el("audio");
        audio.controls = true;
        audio.preload = "metadata";
        audio.src = clipUrl(clip);
        audio.dataset.clip = clip;
        return audio;
      }),
    );
  }
  renderCallActions(c, call, clips);
  return c;
}

function renderCallActions(c, call, clips) {
  const s = review.state;
  const labels = (s && s.classifier && s.classifier.labels) || [];
  const positive = (s && s.classifier && s.classifier.positive) || [];
  const key = `${session.loggedIn}|${labels.join(",")}|${positive.join(",")}|${clips.length}`;
  if (c.actionsKey === key) return; // kept while unchanged: a half-typed class name is not wiped
  c.actionsKey = key;
  const locked = !session.loggedIn || clips.length === 0;
  const genuine = el("select", "genuine-class");
  for (const label of labels.filter((l) => !positive.includes(l))) genuine.append(el("option", "", label));
  genuine.disabled = locked;
  const teachGenuine = el("button", "genuine", "genuine");
  teachGenuine.type = "button";
  teachGenuine.title = "the call's clips join this class, outside the positive group (then Apply)";
  teachGenuine.disabled = locked || !genuine.value;
  teachGenuine.addEventListener("click", () => teachCall(c, clips, { verdict: "relabel", label: genuine.value }));
  const name = el("input", "attack-name");
  name.placeholder = "new kind of attack";
  name.disabled = locked || positive.length === 0;
  const teachAttack = el("button", "new-attack", "teach as a new attack");
  teachAttack.type = "button";
  teachAttack.title = "the call's clips start a new class that joins the positive group (then Apply)";
  teachAttack.disabled = name.disabled;
  teachAttack.addEventListener("click", () =>
    teachCall(c, clips, { verdict: "new", label: name.value.trim(), positive: true }));
  c.actions.replaceChildren(genuine, teachGenuine, name, teachAttack);
}

async function teachCall(c, clips, verdict) {
  try {
    await write("/api/review/verdicts", { clips, ...verdict });
    c.note.textContent = `${clips.length} clip${clips.length === 1 ? "" : "s"} marked ${verdict.label}` +
      `${verdict.positive ? " (a new kind of attack)" : " (genuine)"}: Apply in the Review tab teaches it`;
    c.note.className = "call-note";
  } catch (error) {
    c.note.textContent = error.message;
    c.note.className = "call-note error";
  }
  loadReview();
}
document.getElementById("calls-flagged").addEventListener("change", renderCalls);
