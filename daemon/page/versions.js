// The classifier versions: Apply, Undo, Redo and Restore, each after a summary of what it will change, the
// job calmd runs for it, and the history of every version with its classes and support.
"use strict";

function jobText(s) {
  const job = s.job;
  return job ? `${job.action}: ${job.state}${job.message ? ` · ${job.message}` : ""}` : "";
}

function renderBar(s) {
  const labels = (s.classifier && s.classifier.labels) || [];
  const serving = s.classifier ? s.current || s.classifier.name : "";
  document.getElementById("review-classifier").textContent = s.classifier
    ? `serving ${serving} (${labels.join(", ")})`
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
  const redo = document.getElementById("redo");
  redo.hidden = !s.redo_to;
  redo.disabled = blocked;
  redo.textContent = s.redo_to ? `Redo (${s.redo_to})…` : "Redo…";
  const jobNode = document.getElementById("review-job");
  if (review.offline) {
    jobNode.textContent = "calmd is not reachable: retrying" + (running ? ` (its ${s.job.action} was running)` : "");
    jobNode.className = "job job-offline";
  } else {
    jobNode.textContent = jobText(s);
    jobNode.className = `job ${s.job ? `job-${s.job.state}` : ""}`;
  }
  jobNode.dataset.classifier = (s.job && s.job.classifier) || "";
}

// ---- a summary before anything changes ----------------------------------------------------------------
let confirmed = null;
function ask(text, items, then) {
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-list").replaceChildren(...items.map((item) => el("li", "", item)));
  document.getElementById("confirm").hidden = false;
  confirmed = then;
}
function closeConfirm() {
  document.getElementById("confirm").hidden = true;
  confirmed = null;
}
document.querySelector("#confirm button.confirm").addEventListener("click", () => {
  const then = confirmed;
  closeConfirm();
  if (then) then();
});
document.querySelector("#confirm button.cancel").addEventListener("click", closeConfirm);

async function job(action, body) {
  try {
    await write(`/api/review/${action}`, body || {});
  } catch (error) {
    note(`${action}: ${error.message}`, true);
  }
  await loadReview();
}

function applySummary(s) {
  const labels = (s.classifier && s.classifier.labels) || [];
  const items = Object.entries(s.pending || {})
    .filter(([c]) => !(c in (s.waiting || {})))
    .map(([c, n]) => `${n} clip${n === 1 ? "" : "s"} → ${c}${labels.includes(c) ? "" : " (a new class)"}`);
  for (const [c, n] of Object.entries(s.waiting || {})) {
    items.push(`${c} waits: ${n} clip${n === 1 ? "" : "s"}, a new class needs ${s.min_clips}`);
  }
  return items;
}

document.getElementById("apply").addEventListener("click", () => {
  const s = review.state;
  ask(`Apply refits ${s.current || s.classifier.name} into a new version, which calmd then serves:`, applySummary(s),
    () => job("apply"));
});
document.getElementById("undo").addEventListener("click", () => {
  const s = review.state;
  const n = s.undo_forgets || 0;
  ask(`Undo: calmd serves ${s.undo_to} again (${s.current} is kept, and Redo brings it back).`,
    [`${n} clip${n === 1 ? "" : "s"} taught in ${s.current} become${n === 1 ? "s" : ""} pending again`],
    () => job("undo"));
});
document.getElementById("redo").addEventListener("click", () => {
  const s = review.state;
  ask(`Redo: calmd serves ${s.redo_to} again, instead of ${s.current}.`, [], () =>
    job("restore", { version: s.redo_to }));
});

// ---- the history ----------------------------------------------------------------------------------------
function renderVersions(s) {
  const running = s.job && s.job.state === "running";
  const rows = [...(s.versions || [])].reverse().map((v) => {
    const row = el("tr", v.name === s.current ? "serving" : "");
    row.dataset.version = v.name;
    const name = el("td", "", v.name);
    if (v.name === s.current) name.append(el("span", "badge", "serving"));
    const classes = (v.labels || []).map((c) => (v.support && c in v.support ? `${c} (${v.support[c]})` : c));
    row.append(name, el("td", "muted", `${day(v.created_utc)} ${clock(v.created_utc)}`));
    const taught = el("td", "num", v.taught);
    if (v.checked) {
      const all = v.checked_as_taught === v.checked;
      taught.append(el("div", all ? "check check-ok" : "check check-missed",
        all ? "all labelled as taught" : `${v.checked - v.checked_as_taught} not labelled as taught`));
    }
    const accuracy = v.held_out
      ? `${v.held_out_right}/${v.held_out} right (${Math.round((100 * v.held_out_right) / v.held_out)}%)`
      : "—";
    row.append(el("td", "", classes.join(", ") || "?"), taught, el("td", "num accuracy", accuracy));
    row.append(el("td", "muted", v.note));
    const cell = el("td");
    if (v.name !== s.current) {
      const restore = el("button", "restore", "Restore…");
      restore.type = "button";
      restore.disabled = !session.loggedIn || running || review.offline;
      restore.addEventListener("click", () =>
        ask(`Restore: calmd serves ${v.name} instead of ${s.current} (every version is kept).`,
          [`classes: ${classes.join(", ")}`], () => job("restore", { version: v.name })));
      cell.append(restore);
    }
    row.append(cell);
    return row;
  });
  document.getElementById("versions").replaceChildren(...rows);
}
