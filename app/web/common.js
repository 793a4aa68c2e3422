// What the explorer and the replay page share: building the DOM from API data as text
// (never as markup), calling the API with the tab's key, problems in plain words, badges.
// app.web.page inlines this file into both (and into the HTML report the CLI writes).

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const json = (value) => JSON.stringify(value);
const enc = encodeURIComponent;

// The API key typed into the page, kept for the browser tab only.
const KEY_ITEM = "decision-api-key";
function keyInput() { return document.getElementById("apikey"); }
function restoreKey() {
  if (keyInput()) keyInput().value = sessionStorage.getItem(KEY_ITEM) || "";
}
function rememberKey() {
  if (keyInput()) sessionStorage.setItem(KEY_ITEM, keyInput().value);
}

// An answer other than 2xx: its status and problem document. `routeMissing`: this
// service has no such endpoint at all (a 404 that is not one of the service's own
// problems), so a page can say what it cannot show instead of failing.
class Problem extends Error {
  constructor(status, body, statusText) {
    super((body && (body.detail || body.title)) || statusText || "HTTP " + status);
    this.status = status;
    this.body = body || {};
    this.routeMissing = status === 404 && (this.body.type || "about:blank") === "about:blank";
  }
}

async function api(path, {method = "GET", body} = {}) {
  const headers = {};
  const key = keyInput() ? keyInput().value : "";
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {method, headers,
                                  body: body === undefined ? undefined : json(body)});
  } catch (error) {
    throw new Problem(0, {title: "The service did not answer",
                          detail: "the service could not be reached (" + error.message + ")"});
  }
  let answer = {};
  try { answer = await response.json(); } catch (_) { answer = {}; }
  if (!response.ok) throw new Problem(response.status, answer, response.statusText);
  return answer;
}

// Field names as a person says them; `body` (the request as a whole) says nothing.
const FIELD_WORDS = {
  decision_ids: "Decision ids", fact_sets: "Fact sets", subject: "Subject", since: "Since",
  until: "Until", cursor: "Next page", limit: "Limit", ruleset: "Candidate ruleset",
  "ruleset.name": "Candidate ruleset's name", "ruleset.source": "Candidate ruleset",
  policies: "Candidate policies"};

function fieldWords(name) {
  if (!name || name === "body") return "";
  if (FIELD_WORDS[name]) return FIELD_WORDS[name];
  if (name.startsWith("policies.")) return "Policy file " + name.slice("policies.".length);
  const top = name.split(".")[0];
  return (FIELD_WORDS[top] || top.replace(/_/g, " ")) + name.slice(top.length);
}

const sentence = (text) => text ? text[0].toUpperCase() + text.slice(1) : text;

// A problem as the lines a person reads, each said once: the fields at fault (without
// the API's field paths where they mean nothing to a person), else the access policy's
// reasons, else the detail.
function problemLines(problem) {
  const body = problem.body || {};
  if (problem.status === 401) {
    return [keyInput() && keyInput().value ? "The API key is not valid: check the key field."
                                           : "An API key is needed: type yours in the key field."];
  }
  const params = body["invalid-params"] || [];
  if (params.length) {
    return params.map((p) => {
      const field = fieldWords(p.name);
      return field ? field + ": " + p.reason : sentence(p.reason);
    });
  }
  if ((body.reasons || []).length) return body.reasons.map(sentence);
  return [sentence(body.detail || problem.message)];
}

function problemBox(heading, problem, id) {
  const lines = problemLines(problem);
  return el("section", {class: "problem", id, role: "alert"},
    el("h2", {}, heading || (problem.body && problem.body.title) || "Something went wrong"),
    lines.length === 1 ? el("p", {class: "error"}, lines[0])
                       : el("ul", {}, lines.map((line) => el("li", {class: "error"}, line))));
}

// The statuses an action can have (app/decisions/decision.py, app/dispatch/outbox.py), in words.
const STATUS_WORDS = {
  queued: "allowed; in the outbox, to be delivered",
  waiting: "allowed; waits until the actions it requires are delivered",
  dispatched: "delivered to its executor",
  failed: "delivery failed after the last attempt; parked until an operator re-drives it",
  denied: "the policy denied it; not sent",
  held: "the policy held it (it did not allow it); not sent",
  blocked: "allowed, but it requires an action that will not be sent",
  withdrawn: "the rules no longer proposed it once they saw the policy's verdicts",
  dry_run: "allowed; a dry run sends nothing",
  recorded: "allowed, but not sent (no executor for its type, or already sent earlier)",
};

function statusBadge(status) {
  const known = Object.hasOwn(STATUS_WORDS, status);
  return el("span", {class: "badge status status-" + (known ? status : "unknown"),
                     title: known ? STATUS_WORDS[status] : "a status this page does not know",
                     "data-status": status},
            String(status).replace(/_/g, " "));
}

const outcomeBadge = (outcome) => el("span", {class: "badge outcome " + outcome}, outcome);
