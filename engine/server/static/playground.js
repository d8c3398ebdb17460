// reward-engine playground: score, rank and inspect responses against this server.
// Plain browser JavaScript (no build step, no external code): it calls the server's own
// endpoints, GET /v1/models, POST /v1/score and POST /v1/tokenize.
"use strict";

const MAX_RESPONSES = 16;
const CONTROL_TOKEN = /(<\|[^|<>\s]{1,64}\|>)/; // Llama-3 control tokens such as <|eot_id|>

const state = {
  apiKey: "", // kept in memory only: never in the URL, never in storage
  model: null, // {id, labels, max_model_len} from /v1/models
  importedId: undefined, // the "id" of an imported line, copied to the exports
  importedForm: "responses", // the CLI form the exports use: "responses", "response", "messages"
  last: null, // the last scored request and its results
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// Talking to the server

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.apiKey) headers.Authorization = "Bearer " + state.apiKey;
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "Could not reach the server (" + err.message + "). Is it still running?");
  }
  let data = null;
  const text = await response.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, serverMessage(data, text, response),
      response.headers.get("Retry-After"));
  }
  return data;
}

// The server's error body is {"error": {"message", "type", "code"}}; be lenient with others.
function serverMessage(data, text, response) {
  if (data && data.error) {
    if (typeof data.error === "string") return data.error;
    if (data.error.message) return String(data.error.message);
  }
  if (data && data.detail) {
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) {
      return data.detail.map((d) => (d.loc ? d.loc.join(".") + ": " : "") + d.msg).join("; ");
    }
  }
  const snippet = (text || "").trim().slice(0, 200);
  return response.statusText + (snippet ? ": " + snippet : "") || "no details given";
}

// An error in words for the page: what happened and what to do about it.
function describeError(err) {
  if (!(err instanceof ApiError)) return "Unexpected error in the page: " + err.message;
  switch (err.status) {
    case 0:
      return err.message;
    case 401:
      return "The server needs an API key (HTTP 401): " + err.message +
        "\nEnter the key in the \"API key\" box above and try again.";
    case 503: {
      const wait = err.retryAfter ? " Retry in " + err.retryAfter + " s." : " Retry shortly.";
      return "The server is busy or shutting down (HTTP 503): " + err.message + "." + wait;
    }
    case 504:
      return "The request took too long and was cancelled (HTTP 504): " + err.message;
    case 413:
      return "The request is too large (HTTP 413): " + err.message;
    default:
      return "The server refused the request (HTTP " + err.status + "): " + err.message;
  }
}

function showError(err) {
  const box = $("error");
  box.textContent = typeof err === "string" ? err : describeError(err);
  box.hidden = false;
  if (err instanceof ApiError && err.status === 401) askForKey();
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

function askForKey() {
  $("key-section").hidden = false;
  $("api-key").focus();
}

// ---------------------------------------------------------------------------------------
// The model

async function loadModel() {
  try {
    const data = await api("/v1/models");
    const model = (data && data.data && data.data[0]) || {};
    state.model = {
      id: model.id || "(unnamed)",
      labels: Array.isArray(model.labels) ? model.labels.map(String) : null,
      max_model_len: model.max_model_len || null,
    };
    $("model-name").textContent = state.model.id;
    const details = [];
    if (state.model.labels && state.model.labels.length > 1) {
      details.push(state.model.labels.length + " attributes: " + state.model.labels.join(", "));
    }
    if (state.model.max_model_len) details.push("max " + state.model.max_model_len + " tokens");
    $("model-details").textContent = details.length ? "(" + details.join("; ") + ")" : "";
  } catch (err) {
    $("model-name").textContent = "(unknown)";
    if (err.status === 401) {
      $("model-details").textContent = "(enter the API key to see it)";
      $("key-section").hidden = false;
    } else {
      showError(err);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The form: prompt turns and responses

function addTurn(role = "user", content = "") {
  const li = $("turn-template").content.firstElementChild.cloneNode(true);
  const select = li.querySelector(".turn-role");
  if (!Array.from(select.options).some((o) => o.value === role)) {
    // An imported role the page does not offer (the server says what it accepts).
    select.appendChild(new Option(role, role));
  }
  select.value = role;
  li.querySelector(".turn-content").value = content;
  li.querySelector(".remove-turn").addEventListener("click", () => {
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    renumber();
    (next ? next.querySelector(".turn-content") : $("add-turn")).focus();
  });
  $("turns").appendChild(li);
  renumber();
  return li;
}

function addResponse(content = "") {
  if ($("responses").children.length >= MAX_RESPONSES) return null;
  const li = $("response-template").content.firstElementChild.cloneNode(true);
  li.querySelector(".response-content").value = content;
  li.querySelector(".remove-response").addEventListener("click", () => {
    if ($("responses").children.length <= 1) return;
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    renumber();
    next.querySelector(".response-content").focus();
  });
  li.querySelector(".show-reads").addEventListener("click", () => {
    const index = Array.prototype.indexOf.call($("responses").children, li);
    showReads(index);
  });
  $("responses").appendChild(li);
  renumber();
  return li;
}

// Keep ids, labels and counts in step with the list order.
function renumber() {
  Array.from($("turns").children).forEach((li, i) => {
    const n = i + 1;
    const select = li.querySelector(".turn-role");
    const text = li.querySelector(".turn-content");
    select.id = "turn-role-" + n;
    select.setAttribute("aria-label", "Turn " + n + " role");
    text.id = "turn-text-" + n;
    li.querySelector(".turn-content-label").htmlFor = text.id;
    li.querySelector(".turn-content-label").textContent = "Turn " + n + " text";
    li.querySelector(".remove-turn").setAttribute("aria-label", "Remove turn " + n);
  });
  const responses = Array.from($("responses").children);
  responses.forEach((li, i) => {
    const n = i + 1;
    const text = li.querySelector(".response-content");
    text.id = "response-" + n;
    li.querySelector(".response-label").htmlFor = text.id;
    li.querySelector(".response-label").textContent = "Response " + n;
    const remove = li.querySelector(".remove-response");
    remove.setAttribute("aria-label", "Remove response " + n);
    remove.disabled = responses.length <= 1;
    li.querySelector(".show-reads").setAttribute("aria-label",
      "What the model reads for response " + n);
  });
  $("response-count").textContent = String(responses.length);
  $("add-response").disabled = responses.length >= MAX_RESPONSES;
}

// The prompt as messages: the system prompt (when given) and the turns, in order.
function promptMessages() {
  const messages = [];
  const system = $("system-prompt").value;
  if (system.trim()) messages.push({ role: "system", content: system });
  for (const li of $("turns").children) {
    messages.push({
      role: li.querySelector(".turn-role").value,
      content: li.querySelector(".turn-content").value,
    });
  }
  return messages;
}

function responseTexts() {
  return Array.from($("responses").children, (li) => li.querySelector(".response-content").value);
}

function setForm(prompt, responses) {
  let messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
  $("system-prompt").value = "";
  if (messages.length && messages[0].role === "system") {
    $("system-prompt").value = messages[0].content;
    messages = messages.slice(1);
  }
  $("turns").replaceChildren();
  for (const m of messages) addTurn(m.role, m.content);
  $("responses").replaceChildren();
  for (const r of responses.slice(0, MAX_RESPONSES)) addResponse(r);
  renumber();
}

// ---------------------------------------------------------------------------------------
// Scoring and results

async function score(event) {
  if (event) event.preventDefault();
  if ($("score-button").disabled) return; // one request at a time
  clearError();
  const prompt = promptMessages();
  const responses = responseTexts();
  if (!prompt.length) {
    showError("Give a prompt first: add a turn (or a system prompt) above the responses.");
    return;
  }
  const button = $("score-button");
  button.disabled = true;
  setStatus("Scoring " + responses.length + " response" + (responses.length === 1 ? "" : "s") + "…");
  const started = performance.now();
  try {
    const data = await api("/v1/score", { prompt, responses });
    const wallMs = performance.now() - started;
    state.last = { prompt, responses, rewards: data.rewards, usage: data.usage || {}, wallMs };
    renderResults();
    setStatus("Scored in " + formatMs(wallMs) + ".");
    $("results").focus();
  } catch (err) {
    setStatus("");
    showError(err);
  } finally {
    button.disabled = false;
    // How many Score requests have ended (for scripts and tests that drive the page).
    const form = $("score-form");
    form.dataset.done = String(Number(form.dataset.done || 0) + 1);
  }
}

function formatMs(ms) {
  return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
}

// An item of the "rewards" list: a number, a list of numbers, or {"error": ...}.
function itemError(reward) {
  if (reward && typeof reward === "object" && !Array.isArray(reward)) {
    const e = reward.error;
    let text;
    if (e && typeof e === "object") text = String(e.message || JSON.stringify(e));
    else text = String(e !== undefined ? e : JSON.stringify(reward));
    // The server counts items from 0 ("item 1 is ..."); the page names them "Response 2".
    return text.replace(/^item \d+: /, "").replace(/^item \d+ /, "it ");
  }
  return null;
}

function asVector(reward) {
  return Array.isArray(reward) ? reward.map(Number) : [Number(reward)];
}

function labelNames(width) {
  const labels = state.model && state.model.labels;
  if (labels && labels.length === width) return labels;
  if (width === 1) return ["reward"];
  return Array.from({ length: width }, (_, i) => "label " + i);
}

function renderResults() {
  const { responses, rewards, usage, wallMs } = state.last;
  const valid = rewards.map((r, i) => ({ i, r })).filter((x) => itemError(x.r) === null);
  const width = valid.length ? asVector(valid[0].r).length : 1;
  const names = labelNames(width);

  // Rank by one attribute (the only one for scalar heads).
  const select = $("rank-by");
  const previous = Number(select.value || 0);
  $("rank-by-row").hidden = width <= 1;
  if (select.options.length !== width) {
    select.replaceChildren(...names.map((name, k) => new Option(name, String(k))));
  }
  const by = previous < width ? previous : 0;
  select.value = String(by);

  const lo = [], hi = [];
  for (let k = 0; k < width; k++) {
    const values = valid.map((x) => asVector(x.r)[k]);
    lo.push(Math.min(...values));
    hi.push(Math.max(...values));
  }
  const order = valid.slice().sort((a, b) => asVector(b.r)[by] - asVector(a.r)[by]);
  const rank = new Map();
  order.forEach((x, pos) => {
    const prev = order[pos - 1];
    const tied = prev && asVector(prev.r)[by] === asVector(x.r)[by];
    rank.set(x.i, tied ? rank.get(prev.i) : pos + 1);
  });

  const head = $("results-head");
  head.replaceChildren(
    th("Rank"), th("#"), th("Response", "preview-head"),
    th(width > 1 ? "Rewards" : "Reward"), th("Spread")
  );
  const rows = [];
  const failed = rewards.map((r, i) => ({ i, r })).filter((x) => itemError(x.r) !== null);
  for (const x of [...order, ...failed]) {
    const tr = document.createElement("tr");
    tr.className = "result-row";
    tr.dataset.index = String(x.i);
    const err = itemError(x.r);
    tr.appendChild(td(err === null ? String(rank.get(x.i)) : "–", "rank"));
    tr.appendChild(td(String(x.i + 1), "index"));
    tr.appendChild(td(preview(responses[x.i]), "preview"));
    if (err !== null) {
      const cell = td("Not scored: " + err, "item-error");
      cell.colSpan = 2;
      tr.appendChild(cell);
    } else {
      const vec = asVector(x.r);
      const rewardCell = td("", "reward");
      const barCell = td("", "bar-cell");
      vec.forEach((v, k) => {
        const line = document.createElement("div");
        line.className = "reward-value";
        line.dataset.value = String(v);
        line.title = String(v);
        line.textContent = (width > 1 ? names[k] + ": " : "") + v.toFixed(4);
        rewardCell.appendChild(line);
        barCell.appendChild(bar(names[k], v, lo[k], hi[k], width > 1));
      });
      tr.appendChild(rewardCell);
      tr.appendChild(barCell);
    }
    rows.push(tr);
  }
  $("results-rows").replaceChildren(...rows);

  const tokens = usage.prompt_tokens !== undefined ? usage.prompt_tokens : usage.total_tokens;
  const parts = [
    valid.length + " of " + rewards.length + " response" + (rewards.length === 1 ? "" : "s") +
      " scored",
  ];
  if (tokens !== undefined) parts.push(tokens + " tokens");
  parts.push("wall time " + formatMs(wallMs));
  $("results-summary").textContent = parts.join(" · ");
  if (failed.length) {
    // Neighbours of a bad item are still scored; say which ones were not, and why.
    showError(failed.length + " of " + rewards.length + " responses could not be scored:\n" +
      failed.map((x) => "Response " + (x.i + 1) + ": " + itemError(x.r)).join("\n"));
  }
  $("results-empty").hidden = true;
  $("results-body").hidden = false;
}

function th(text, cls) {
  const cell = document.createElement("th");
  cell.scope = "col";
  cell.textContent = text;
  if (cls) cell.className = cls;
  return cell;
}

function td(text, cls) {
  const cell = document.createElement("td");
  cell.textContent = text;
  if (cls) cell.className = cls;
  return cell;
}

function preview(text) {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > 120 ? flat.slice(0, 117) + "…" : flat || "(empty)";
}

// A bar whose length is the reward's place between the lowest and highest of this request.
function bar(name, value, lo, hi, named) {
  const wrap = document.createElement("div");
  wrap.className = "bar";
  const fraction = hi > lo ? (value - lo) / (hi - lo) : 1;
  if (named) {
    const label = document.createElement("span");
    label.className = "bar-name";
    label.textContent = name;
    wrap.appendChild(label);
  }
  const track = document.createElement("div");
  track.className = "bar-track";
  track.setAttribute("role", "img");
  track.setAttribute("aria-label", name + " " + Math.round(fraction * 100) +
    "% of the way from the lowest to the highest");
  const fill = document.createElement("div");
  fill.className = "bar-fill";
  fill.style.width = (fraction * 100).toFixed(1) + "%";
  track.appendChild(fill);
  wrap.appendChild(track);
  return wrap;
}

// ---------------------------------------------------------------------------------------
// What the model reads

async function showReads(index) {
  clearError();
  const messages = promptMessages();
  messages.push({ role: "assistant", content: responseTexts()[index] });
  setStatus("Formatting response " + (index + 1) + "…");
  try {
    const data = await api("/v1/tokenize", { messages });
    renderReads(index, data);
    setStatus("");
    $("reads").hidden = false;
    $("reads").focus();
  } catch (err) {
    setStatus("");
    showError(err);
  }
}

function renderReads(index, data) {
  const max = data.max_model_len;
  let summary = "Response " + (index + 1) + ": " + data.count + " tokens";
  if (max) summary += " of the model's maximum " + max;
  if (max && data.count > max) summary += " — too long: the model refuses it";
  summary += ". Control tokens are highlighted.";
  $("reads-summary").textContent = summary;

  const pre = $("reads-text");
  pre.replaceChildren();
  for (const piece of data.text.split(CONTROL_TOKEN)) {
    if (!piece) continue;
    if (CONTROL_TOKEN.test(piece) && piece.match(CONTROL_TOKEN)[0] === piece) {
      const span = document.createElement("span");
      span.className = "control";
      span.textContent = piece;
      pre.appendChild(span);
    } else {
      pre.appendChild(document.createTextNode(piece));
    }
  }
  const list = $("reads-tokens");
  const items = (data.tokens || []).map((token, i) => {
    const li = document.createElement("li");
    // Spaces and line breaks made visible, so each token's extent shows.
    li.textContent = token.replace(/ /g, "\u00b7").replace(/\n/g, "\u21b5");
    li.title = "token " + i + ": id " + data.token_ids[i];
    if (/^<\|.*\|>$/.test(token)) li.className = "control";
    return li;
  });
  list.replaceChildren(...items);
  list.hidden = !$("reads-show-tokens").checked;
}

// ---------------------------------------------------------------------------------------
// Import and export (the JSON Lines forms of `reward-engine score`)

function importLine(text) {
  const lines = text.split(/\r?\n/).filter((l) => l.trim());
  if (!lines.length) throw new Error("nothing to load: paste one JSON line");
  let record;
  try {
    record = JSON.parse(lines[0]);
  } catch (err) {
    throw new Error("line 1 is not valid JSON: " + err.message);
  }
  if (!record || typeof record !== "object" || Array.isArray(record)) {
    throw new Error("a line must be a JSON object");
  }
  const checkMessages = (messages, key) => {
    if (!Array.isArray(messages) || !messages.length) {
      throw new Error("'" + key + "' must be a non-empty array of messages");
    }
    messages.forEach((m, i) => {
      if (!m || typeof m.role !== "string" || typeof m.content !== "string") {
        throw new Error("'" + key + "'[" + i + "] needs a string 'role' and 'content'");
      }
    });
    return messages.map((m) => ({ role: m.role, content: m.content }));
  };
  let prompt, responses, form;
  if ("messages" in record) {
    const messages = checkMessages(record.messages, "messages");
    const last = messages[messages.length - 1];
    if (last.role !== "assistant" || messages.length < 2) {
      throw new Error("the last message must be the assistant's response to score, after a prompt");
    }
    prompt = messages.slice(0, -1);
    responses = [last.content];
    form = "messages";
  } else if ("prompt" in record) {
    prompt = typeof record.prompt === "string" ? record.prompt : checkMessages(record.prompt, "prompt");
    if ("responses" in record) {
      if (!Array.isArray(record.responses) || !record.responses.length ||
          !record.responses.every((r) => typeof r === "string")) {
        throw new Error("'responses' must be a non-empty array of strings");
      }
      if (record.responses.length > MAX_RESPONSES) {
        throw new Error("the page takes at most " + MAX_RESPONSES + " responses; this line has " +
          record.responses.length + " (score it with reward-engine score)");
      }
      responses = record.responses;
      form = "responses";
    } else if (typeof record.response === "string") {
      responses = [record.response];
      form = "response";
    } else {
      throw new Error("'prompt' needs a 'response' (a string) or 'responses' (an array of strings)");
    }
  } else {
    throw new Error('unknown form: give {"messages": [...]}, {"prompt": ..., "response": "..."} ' +
      'or {"prompt": ..., "responses": [...]}');
  }
  setForm(prompt, responses);
  state.importedId = "id" in record ? record.id : undefined;
  state.importedForm = form;
  const more = lines.length > 1 ? " (line 1 of " + lines.length + "; the page holds one at a time)" : "";
  return "Loaded " + responses.length + " response" + (responses.length === 1 ? "" : "s") + more + ".";
}

function withId(record) {
  return state.importedId === undefined ? record : { id: state.importedId, ...record };
}

// The page's input as one line of `reward-engine score` input.
function inputRecord() {
  const prompt = promptMessages();
  const responses = responseTexts();
  const plain = prompt.length === 1 && prompt[0].role === "user" ? prompt[0].content : prompt;
  if (responses.length === 1 && state.importedForm === "messages") {
    return withId({ messages: [...prompt, { role: "assistant", content: responses[0] }] });
  }
  if (responses.length === 1 && state.importedForm === "response") {
    return withId({ prompt: plain, response: responses[0] });
  }
  return withId({ prompt: plain, responses });
}

// The last results as `reward-engine score` writes its output line.
function outputRecord() {
  const { rewards } = state.last;
  const bad = rewards.findIndex((r) => itemError(r) !== null);
  const single = rewards.length === 1 && state.importedForm !== "responses";
  if (bad >= 0) {
    const where = single ? "" : "'responses'[" + bad + "]: ";
    return withId({ line: 1, error: where + itemError(rewards[bad]) });
  }
  return withId(single ? { line: 1, reward: rewards[0] } : { line: 1, rewards });
}

function download(name, record) {
  const blob = new Blob([JSON.stringify(record) + "\n"], { type: "application/jsonl" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---------------------------------------------------------------------------------------
// Wiring

function init() {
  addTurn("user", "");
  addResponse("");
  addResponse("");

  $("add-turn").addEventListener("click", () => {
    const turns = $("turns").children;
    const lastRole = turns.length ? turns[turns.length - 1].querySelector(".turn-role").value : "assistant";
    addTurn(lastRole === "user" ? "assistant" : "user").querySelector(".turn-content").focus();
  });
  $("add-response").addEventListener("click", () => {
    const li = addResponse("");
    if (li) li.querySelector(".response-content").focus();
  });
  $("score-form").addEventListener("submit", score);
  $("score-form").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) score(event);
  });
  // The key takes effect as it is typed; committing it (Enter, leaving the box) reloads the
  // model line, which the server may refuse without it.
  $("api-key").addEventListener("input", () => {
    state.apiKey = $("api-key").value.trim();
  });
  $("api-key").addEventListener("change", () => {
    clearError();
    loadModel();
  });
  $("rank-by").addEventListener("change", () => state.last && renderResults());
  $("reads-show-tokens").addEventListener("change", () => {
    $("reads-tokens").hidden = !$("reads-show-tokens").checked;
  });
  $("import-button").addEventListener("click", () => {
    try {
      $("import-status").textContent = importLine($("import-text").value);
    } catch (err) {
      $("import-status").textContent = "";
      showError("Could not load the line: " + err.message);
    }
  });
  $("import-file").addEventListener("change", async () => {
    const file = $("import-file").files[0];
    if (!file) return;
    const text = await file.text();
    $("import-text").value = text.split(/\r?\n/).find((l) => l.trim()) || "";
    try {
      clearError();
      $("import-status").textContent = file.name + ": " + importLine(text);
    } catch (err) {
      $("import-status").textContent = "";
      showError("Could not load " + file.name + ": " + err.message);
    }
  });
  $("export-input").addEventListener("click", () => download("playground-input.jsonl", inputRecord()));
  $("export-results").addEventListener("click", () => {
    if (state.last) download("playground-results.jsonl", outputRecord());
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
