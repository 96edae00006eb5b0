// The ranking page. Model output is untrusted text: it only ever reaches the page through textContent.
"use strict";

const state = {
  annotator: null, // name (local session) or null when a token names us
  token: localStorage.getItem("rlhf-label-token"),
  ties: false,
  item: null, // {item, prompt, responses}
  order: [], // response indices, best first
  tied: new Set(), // responses tied with the one just above them
  selected: null, // a response index
  shownAt: 0,
  busy: false,
};

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const reply = await fetch(path, body ? { method: "POST", headers, body: JSON.stringify(body) } : { headers });
  const data = await reply.json().catch(() => ({ error: reply.statusText }));
  if (!reply.ok) throw Object.assign(new Error(data.error || reply.statusText), { status: reply.status });
  return data;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function start() {
  try {
    const session = await api("/api/session").catch((err) => {
      if (err.status !== 401) throw err;
      if (state.token) showError(err.message); // a wrong token: ask again
      forgetToken();
      return { auth: true, annotator: null };
    });
    state.ties = session.ties;
    state.annotator = session.annotator || (session.auth ? null : localStorage.getItem("rlhf-label-annotator"));
    if (session.annotator || (!session.auth && state.annotator)) {
      $("who").textContent = state.annotator;
      return loadNext();
    }
    askLogin(session.auth);
  } catch (err) {
    showError(err.message);
  }
}

function forgetToken() {
  state.token = null;
  localStorage.removeItem("rlhf-label-token");
}

function askLogin(auth) {
  $("login-label").textContent = auth ? "Your token" : "Your name";
  $("login-input").type = auth ? "password" : "text";
  $("login").hidden = false;
  $("login-input").value = "";
  $("login-input").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("login-input").value.trim();
  if ($("login-input").type === "password") {
    state.token = value;
    localStorage.setItem("rlhf-label-token", value);
  } else {
    localStorage.setItem("rlhf-label-annotator", value);
  }
  $("login").hidden = true;
  start();
});

async function loadNext() {
  showError("");
  try {
    const query = state.annotator ? "?annotator=" + encodeURIComponent(state.annotator) : "";
    const next = await api("/api/next" + query);
    $("progress").textContent = next.done ? "" : `${next.ranked} ranked, ${next.remaining} to go`;
    if (next.done) {
      $("task").hidden = true;
      $("done").hidden = false;
      $("done").textContent = `All done: you ranked ${next.ranked} prompts. Thank you.`;
      return;
    }
    state.item = next;
    state.order = next.responses.map((_, i) => i);
    state.tied = new Set();
    state.selected = 0;
    state.shownAt = performance.now();
    $("prompt").textContent = next.prompt;
    $("task").hidden = false;
    render();
  } catch (err) {
    if (err.status === 401) {
      forgetToken();
      askLogin(true);
    }
    showError(err.message);
  }
}

function tiers() {
  const out = [];
  state.order.forEach((i, position) => {
    if (position > 0 && state.tied.has(i)) out[out.length - 1].push(i);
    else out.push([i]);
  });
  return out;
}

function render() {
  const list = $("responses");
  list.replaceChildren();
  let rank = 0;
  state.order.forEach((i, position) => {
    const tiedAbove = position > 0 && state.tied.has(i);
    if (!tiedAbove) rank += 1;
    const li = document.createElement("li");
    li.dataset.index = String(i);
    li.classList.toggle("selected", i === state.selected);
    li.classList.toggle("tied", tiedAbove);
    const number = document.createElement("span");
    number.className = "rank";
    number.textContent = tiedAbove ? "=" : "#" + rank;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = "[" + (i + 1) + "]";
    const text = document.createElement("pre");
    text.textContent = state.item.responses[i];
    li.append(number, label, text);
    li.addEventListener("pointerdown", (event) => beginDrag(event, li));
    list.append(li);
  });
  const tieKeys = state.ties ? ", = ties it with the one above" : "";
  $("help").textContent =
    `Keys: 1-${state.order.length} select a response (by its [label]), ↑/↓ move it${tieKeys}, ` +
    "Enter submits. Or drag the responses into order.";
}

function move(index, delta) {
  const from = state.order.indexOf(index);
  const to = Math.max(0, Math.min(state.order.length - 1, from + delta));
  if (from === to) return;
  state.order.splice(from, 1);
  state.order.splice(to, 0, index);
  state.tied.delete(index);
  render();
}

document.addEventListener("keydown", (event) => {
  if ($("task").hidden || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const digit = Number.parseInt(event.key, 10);
  if (digit >= 1 && digit <= state.order.length) {
    state.selected = digit - 1;
    render();
  } else if (event.key === "ArrowUp" || event.key === "ArrowDown") {
    move(state.selected, event.key === "ArrowUp" ? -1 : 1);
  } else if (event.key === "=" && state.ties && state.order.indexOf(state.selected) > 0) {
    if (state.tied.has(state.selected)) state.tied.delete(state.selected);
    else state.tied.add(state.selected);
    render();
  } else if (event.key === "Enter") {
    submit();
  } else {
    return;
  }
  event.preventDefault();
});

// Dragging with pointer events (mouse, pen and touch alike): the card follows the pointer through the list.
// The listeners sit on the document: moving the card in the DOM would end a pointer capture on the card.
function beginDrag(event, li) {
  const index = Number(li.dataset.index);
  state.selected = index;
  event.preventDefault();
  li.classList.add("dragging", "selected");
  const onMove = (moveEvent) => {
    const over = [...$("responses").children].find((other) => {
      const box = other.getBoundingClientRect();
      return moveEvent.clientY >= box.top && moveEvent.clientY <= box.bottom;
    });
    if (!over || over === li) return;
    const target = Number(over.dataset.index);
    const box = over.getBoundingClientRect();
    const after = moveEvent.clientY > box.top + box.height / 2;
    const from = state.order.indexOf(index);
    let to = state.order.indexOf(target) + (after ? 1 : 0);
    if (to > from) to -= 1;
    if (to === from) return;
    state.order.splice(from, 1);
    state.order.splice(to, 0, index);
    state.tied.delete(index);
    over.parentNode.insertBefore(li, after ? over.nextSibling : over);
  };
  const onUp = () => {
    document.removeEventListener("pointermove", onMove);
    document.removeEventListener("pointerup", onUp);
    document.removeEventListener("pointercancel", onUp);
    render();
  };
  document.addEventListener("pointermove", onMove);
  document.addEventListener("pointerup", onUp);
  document.addEventListener("pointercancel", onUp);
}

async function submit() {
  if (state.busy || !state.item) return;
  state.busy = true;
  $("submit").disabled = true;
  try {
    await api("/api/rankings", {
      item: state.item.item,
      annotator: state.annotator,
      order: tiers(),
      seconds: (performance.now() - state.shownAt) / 1000,
    });
    await loadNext(); // only once the server has the ranking on disk
  } catch (err) {
    showError(err.message);
  } finally {
    state.busy = false;
    $("submit").disabled = false;
  }
}

$("submit").addEventListener("click", submit);
start();
