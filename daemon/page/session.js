// The login session and calmd's JSON API: reads, and writes with the session's CSRF token.
"use strict";

const session = { writes: "disabled", loggedIn: false, csrf: null };

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
  if (typeof renderReview === "function") renderReview(); // review.js, loaded after this file
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
