// The storyteller's web app (Chapter 16): plain JavaScript, no build step, no network beyond this server.
// Conversations live on the server (SQLite, /api/conversations); replies stream from /v1/chat/completions as
// server-sent events, from the chat model through the chat template (Chapter 14): ask for a story, then for
// changes. A long conversation is sent whole with truncation "auto": the server keeps the last turns that fit the
// context, and the page says so once per conversation when the oldest no longer do (usage.dropped_messages).
// Stop aborts the request: the server sees the client leave and frees its batch row.
// Illustrate (Chapter 17) draws a storyteller message (its most drawable sentence, or the text selected in it) on
// the server, which keeps the picture with the conversation; the conversation names it and the PNG is fetched once.
// 👍 / 👎 (Chapter 15) rate a reply on the server (PUT .../messages/{i}/rating); Regenerate keeps the reply it
// replaces as an "earlier try" of the new one, which can be rated too: a liked and a disliked reply to the same
// request are a preference pair (`llm101n prefs export`, GET /api/preferences).
// Replies are shown as Markdown built from DOM nodes and text only (markdown(): nothing is ever parsed as HTML).
// A reply that breaks off (server gone, network down) keeps its words; the page says why and Send comes back.
// Conversations are renamed in the list (PUT with their messages as they are) and deleted after a yes in the list.
// Every save names the version it was made from (If-Match): when another tab wrote meanwhile (409), the page loads
// the conversation again and adds its new turn after the other tab's; a change it cannot re-apply is said, not forced.
// The server keeps each reply in the conversation as it streams (a reply cut off is there after a reload, marked
// interrupted); a reply that did not end shows Continue, which asks for more of the same reply.
"use strict";

const MODEL = "storyteller";
const $ = (id) => document.getElementById(id);
const state = {
  list: [],            // [{id, title, updated}]
  conv: null,          // {id, title, messages: [{role, content}]}
  controller: null,    // AbortController of the reply being streamed
  editIndex: null,     // index of the user message being edited
  renaming: null,      // id of the conversation whose title is being edited in the list
  renameValue: null,   // what has been typed there (kept if the list is redrawn meanwhile)
  confirming: null,    // id of the conversation whose deletion waits for a yes
  saving: null,        // a Promise: the last save of the conversation, settled once the server has it
};
const pictures = new Map();  // a picture's url@created -> Promise of an image URL (fetched once, then kept)

// -- talking to the server -----------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem("llm101n-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch { /* not JSON */ }
  return resp.status + " " + resp.statusText;
}

// `extra`: more headers (If-Match). A refusal throws an Error with the server's message and its `status`.
async function api(method, path, body, extra) {
  let resp;
  try {
    resp = await fetch(path, { method, headers: { ...headers(), ...extra },
      body: body ? JSON.stringify(body) : undefined });
  } catch (e) {  // no answer at all (a TypeError: "Failed to fetch"): say which way it failed
    throw new Error("The server cannot be reached: " + e.message);
  }
  if (resp.status === 401) {
    const key = window.prompt("This server needs an API key (llm101n serve --api-key):");
    if (key) { localStorage.setItem("llm101n-api-key", key); return api(method, path, body, extra); }
  }
  if (!resp.ok) throw Object.assign(new Error(await errorText(resp)), { status: resp.status });
  return resp.json();
}

// Read an SSE stream: events end with a blank line; "data: " lines carry the JSON chunks.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

// -- the page ----------------------------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

// The sidebar on a phone (style.css, max-width 640px): hidden until the menu button opens it over the chat; a
// conversation chosen, the scrim or Escape closes it. On a wide screen it is always there and this changes nothing.
function showSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
  document.querySelector("main").inert = open;  // the chat behind the scrim: not reachable with Tab meanwhile
  if (open) $("new-chat").focus();
}

function closeSidebar() {
  if (document.body.classList.contains("sidebar-open")) showSidebar(false);
}

// The list, redrawn: an item whose title and state (plain, being renamed, asking to delete) did not change stays the
// same element, so a click on it is never lost to a redraw, and a field being typed in keeps its focus.
function renderList() {
  const ul = $("conversations");
  const old = new Map([...ul.children].map((li) => [li.dataset.id, li]));
  const items = state.list.map((c) => {
    const mode = state.renaming === c.id ? "rename" : state.confirming === c.id ? "confirm" : "plain";
    let li = old.get(c.id);
    if (li && li.dataset.mode === mode && (mode === "rename" || li.dataset.title === c.title)) {
      old.delete(c.id);
    } else {
      li = document.createElement("li");
      li.dataset.id = c.id;
      li.append(...(mode === "rename" ? [renameInput(c)] : mode === "confirm" ? confirmDelete(c) : listButtons(c)));
    }
    li.dataset.mode = mode;
    li.dataset.title = c.title;
    li.className = "conversation" + (state.conv && state.conv.id === c.id ? " active" : "");
    return li;
  });
  for (const li of old.values()) li.remove();  // first: the items kept then only move if the order changed
  items.forEach((li, k) => { if (ul.children[k] !== li) ul.insertBefore(li, ul.children[k] || null); });
}

function button(className, label, testid, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.setAttribute("data-testid", testid);
  b.onclick = onclick;
  return b;
}

// A conversation in the list: its title (click: open it, double-click: rename it), ✎ rename, × delete.
function listButtons(c) {
  const name = c.title || "New story";
  const open = button("open", name, "open", () => openConversation(c.id));
  open.title = name;
  open.ondblclick = () => startRename(c.id);
  const rename = button("rename", "✎", "rename", () => startRename(c.id));
  rename.title = "Rename this conversation";
  rename.setAttribute("aria-label", "Rename " + name);
  const del = button("delete", "×", "delete", () => askDelete(c.id));
  del.title = "Delete this conversation";
  del.setAttribute("aria-label", "Delete " + name);
  return [open, rename, del];
}

// Renaming in place: Enter (or leaving the field) saves, Escape cancels.
function renameInput(c) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "rename-input";
  input.setAttribute("data-testid", "rename-input");
  input.setAttribute("aria-label", "New title");
  input.maxLength = 200;
  input.value = state.renameValue !== null ? state.renameValue : c.title;
  input.oninput = () => { state.renameValue = input.value; };
  let done = false;  // Enter saves, then the field goes away and blurs: once is enough
  const finish = (keep) => {
    if (done) return;
    done = true;
    if (keep) renameConversation(c.id, input.value); else { stopRename(); renderList(); }
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  return input;
}

// Deleting asks first, in the list itself: "Delete “title”?" with Delete and Cancel (focused; Escape cancels too).
function confirmDelete(c) {
  const box = document.createElement("div");
  box.className = "confirm";
  box.setAttribute("role", "group");
  box.setAttribute("data-testid", "confirm-delete");
  const question = document.createElement("span");
  question.className = "question";
  question.textContent = "Delete “" + (c.title || "New story") + "”?";
  const yes = button("yes", "Delete", "confirm-delete-yes", () => deleteConversation(c.id));
  const no = button("cancel", "Cancel", "confirm-delete-no", () => { state.confirming = null; renderList(); });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.stopPropagation(); state.confirming = null; renderList(); }
  });
  box.append(question, yes, no);
  return [box];
}

function messageElement(m, index) {
  const div = document.createElement("div");
  div.className = "message " + m.role;
  div.dataset.testid = m.role + "-message";
  div.setAttribute("data-testid", m.role + "-message");
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = m.role === "user" ? "You" : m.role === "assistant" ? "Storyteller" : "System";
  const text = document.createElement("div");
  text.className = "text";
  if (m.role === "assistant") text.append(markdown(m.content)); else text.textContent = m.content;
  const tools = document.createElement("div");
  tools.className = "tools";
  const extra = [];
  if (m.role === "assistant") {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.setAttribute("data-testid", "copy");
    copy.onclick = () => copyText(m.content, copy);  // the words as written, Markdown and all
    const box = document.createElement("div");
    box.className = "picture";
    if (m.illustration) box.append(figureElement(m.illustration));
    tools.append(copy, illustrateButton(m, index, text, box), ratingButtons(m, index, false));
    extra.push(box);
    if (m.alternatives && m.alternatives.length) extra.push(alternativesElement(m, index));
    if (m.interrupted && index === state.conv.messages.length - 1) extra.push(interruptedNote());
  } else if (m.role === "user") {
    const edit = document.createElement("button");
    edit.type = "button";
    edit.textContent = "Edit";
    edit.setAttribute("data-testid", "edit");
    edit.onclick = () => startEdit(index);
    tools.append(edit);
  }
  div.append(who, text, tools, ...extra);
  return div;
}

// -- the storyteller's words as Markdown, safely ----------------------------------------------------

// Blocks: "# " to "###### " headings, "- " / "* " / "+ " and "1. " lists, paragraphs (between blank lines; a single
// newline stays one). Inline: `code`, **bold**, *italic* / _italic_. Everything else is text, HTML and links
// included: the page is built from createElement and text nodes only, never innerHTML, so a reply (or anything a
// user stored) cannot inject markup or script, whatever it holds.
const HEADING = /^(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const ITEM = /^\s{0,3}(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;
const INLINE = new RegExp([
  "`([^`\n]+)`",  // code
  "\\*\\*([^\\s*](?:[^\\n]*?[^\\s*])?)\\*\\*",  // bold
  "\\*([^\\s*](?:[^\\n*]*?[^\\s*])?)\\*",  // italic
  "(?<![\\p{L}\\p{N}_])_([^\\s_](?:[^\\n_]*?[^\\s_])?)_(?![\\p{L}\\p{N}_])",  // italic, not inside a word
].join("|"), "u");

function markdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const heading = HEADING.exec(line);
    const item = ITEM.exec(line);
    if (!line.trim()) {
      i++;
    } else if (heading) {
      const h = document.createElement("h" + Math.min(6, heading[1].length + 2));  // below the page's own h1
      inline(h, heading[2]);
      out.append(h);
      i++;
    } else if (item) {
      const ordered = item[2] !== undefined;
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered && item[2] !== "1") list.start = Number(item[2]);
      let next = item;
      while (next && (next[2] !== undefined) === ordered) {
        const li = document.createElement("li");
        inline(li, next[3]);
        list.append(li);
        next = ++i < lines.length ? ITEM.exec(lines[i]) : null;
      }
      out.append(list);
    } else {
      const para = [];
      const plain = (l) => l.trim() && !HEADING.test(l) && !ITEM.test(l);
      while (i < lines.length && plain(lines[i])) para.push(lines[i++]);
      const p = document.createElement("p");
      inline(p, para.join("\n"));
      out.append(p);
    }
  }
  return out;
}

// `text` with its inline marks into `parent`: strings become text nodes (append never parses HTML).
function inline(parent, text) {
  let rest = text;
  for (let m = INLINE.exec(rest); m; m = INLINE.exec(rest)) {
    if (m.index) parent.append(rest.slice(0, m.index));
    if (m[1] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[1];
      parent.append(code);
    } else {
      const mark = document.createElement(m[2] !== undefined ? "strong" : "em");
      inline(mark, m[2] !== undefined ? m[2] : m[3] !== undefined ? m[3] : m[4]);
      parent.append(mark);
    }
    rest = rest.slice(m.index + m[0].length);
  }
  if (rest) parent.append(rest);
}

// -- thumbs up / down (Chapter 15) -----------------------------------------------------------------

const THUMBS = [[1, "up", "Good reply", "rate-up"], [-1, "down", "Bad reply", "rate-down"]];
// A thumb drawn in SVG (emoji need a font that many systems lack); thumb down is it turned around (CSS).
const THUMB_PATH = "M2 10h4v11H2zM8 10l4-7c1.5 0 2.5 1 2 3l-1 4h6.5c1.4 0 2.3 1.3 1.9 2.6l-2.1 7c-.3.8-1 " +
  "1.4-1.9 1.4H8z";

function thumbIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of Object.entries({ viewBox: "0 0 24 24", width: "14", height: "14", "aria-hidden": "true",
    focusable: "false" })) svg.setAttribute(k, v);
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", THUMB_PATH);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

// Two toggle buttons (aria-pressed) for `target`: a message, or one of its alternatives ({content, rating}).
function ratingButtons(target, index, alternative) {
  const group = document.createElement("span");
  group.className = "rating";
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", alternative ? "Rate this earlier try" : "Rate this reply");
  const buttons = THUMBS.map(([value, way, label, testid]) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "rate rate-" + way;
    b.append(thumbIcon());
    b.title = label + " (press again to clear)";
    b.setAttribute("aria-label", label);
    b.setAttribute("data-testid", testid);
    b.dataset.value = String(value);
    b.onclick = () => rate(target, index, value, buttons);
    return b;
  });
  showRating(buttons, target.rating || 0);
  group.append(...buttons);
  return group;
}

function showRating(buttons, rating) {
  for (const b of buttons) b.setAttribute("aria-pressed", String(Number(b.dataset.value) === rating));
}

// Pressing the pressed thumb clears the rating. The reply's text goes along: a reply not saved yet is refused by
// the server, never mistaken for the one saved at its place. A failure is one line; nothing else changes.
async function rate(target, index, value, buttons) {
  if (!state.conv) return;
  const conv = state.conv;
  const rating = (target.rating || 0) === value ? 0 : value;
  buttons.forEach((b) => { b.disabled = true; });
  try {
    if (state.saving) await state.saving;  // a reply that just ended is being saved
    const path = "/api/conversations/" + encodeURIComponent(conv.id) + "/messages/" + index + "/rating";
    const got = await api("PUT", path, { rating, content: target.content });
    target.rating = got.rating;
    target.rated = got.rated;
    wroteOnTop(conv, got.version);
    showError("");
  } catch (e) {
    showError("The rating was not saved: " + e.message);
  }
  buttons.forEach((b) => { b.disabled = false; });
  showRating(buttons, target.rating || 0);
  if (!buttons[0].isConnected && state.conv === conv && !state.controller) renderMessages();  // redrawn meanwhile
}

// The replies that Regenerate replaced (kept on the server), each with its own thumbs.
function alternativesElement(m, index) {
  const details = document.createElement("details");
  details.className = "alternatives";
  details.setAttribute("data-testid", "alternatives");
  const summary = document.createElement("summary");
  const n = m.alternatives.length;
  summary.textContent = n === 1 ? "1 earlier try" : n + " earlier tries";
  details.append(summary);
  for (const alt of m.alternatives) {
    const item = document.createElement("div");
    item.className = "alternative";
    item.setAttribute("data-testid", "alternative");
    const text = document.createElement("div");
    text.className = "alt-text";  // not "text": that is the message's own
    text.append(markdown(alt.content));
    const tools = document.createElement("div");
    tools.className = "tools";
    tools.append(ratingButtons(alt, index, true));
    item.append(text, tools);
    details.append(item);
  }
  return details;
}

// -- pictures (Chapter 17) -------------------------------------------------------------------------

// The text selected inside `element` (a message's text), or "" when nothing is selected there.
function selectionIn(element) {
  const sel = window.getSelection();
  if (!sel || sel.isCollapsed || !sel.rangeCount) return "";
  const range = sel.getRangeAt(0);
  if (!element.contains(range.startContainer) || !element.contains(range.endContainer)) return "";
  return sel.toString().trim();
}

function illustrateButton(m, index, text, box) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "illustrate";
  button.textContent = "Illustrate";
  button.title = "Draw this story's most drawable sentence (or the words you select in it)";
  button.setAttribute("data-testid", "illustrate");
  let selected = null;  // read as the press starts: a click may change the selection before it ends
  button.addEventListener("mousedown", () => { selected = selectionIn(text); });
  button.onclick = () => {
    const sentence = selected !== null ? selected : selectionIn(text);
    selected = null;
    illustrate(m, index, sentence, button, box);
  };
  return button;
}

// A picture with its caption line: alt is the caption the illustrator drew, the line says which sentence it was.
function figureElement(ill) {
  const figure = document.createElement("figure");
  figure.setAttribute("data-testid", "illustration");
  const img = document.createElement("img");
  img.alt = ill.caption;
  img.title = ill.caption;
  const line = document.createElement("figcaption");
  line.textContent = "Drawn from “" + ill.sentence + "”";
  figure.append(img, line);
  pictureSource(ill).then((src) => { img.src = src; },
    (e) => { line.textContent = "The picture did not load: " + e.message; });
  return figure;
}

function pictureSource(ill) {
  const key = ill.url + "@" + ill.created;
  if (!pictures.has(key)) {
    const load = (async () => {
      const resp = await fetch(ill.url, { headers: headers() });
      if (!resp.ok) throw new Error(await errorText(resp));
      return URL.createObjectURL(await resp.blob());
    })();
    load.catch(() => pictures.delete(key));  // tried again next time
    pictures.set(key, load);
  }
  return pictures.get(key);
}

function pictureNote(box, className, message) {
  let note = box.querySelector(".picture-note");
  if (!note) {
    note = document.createElement("p");
    note.setAttribute("role", "status");
    box.append(note);
  }
  note.className = "picture-note " + className;
  note.setAttribute("data-testid", className);
  note.textContent = message;
  return note;
}

// Draw message `index` (or `sentence` of it) on the server, which keeps the picture; show it under the message.
// A refusal (nothing to draw, no illustrator) is shown under the message; nothing else changes.
async function illustrate(m, index, sentence, button, box) {
  if (!state.conv || button.disabled) return;
  const conv = state.conv;
  button.disabled = true;
  button.textContent = "Drawing…";
  box.setAttribute("aria-busy", "true");
  pictureNote(box, "picture-busy", sentence ? "Drawing “" + sentence + "”…" : "Drawing the story…");
  try {
    const path = "/api/conversations/" + encodeURIComponent(conv.id) + "/messages/" + index + "/illustration";
    const body = sentence ? { sentence } : {};
    // The first picture of a sentence is the same on every machine (seed 0); drawing it again gives another one
    if (m.illustration) body.seed = Math.floor(Math.random() * 2 ** 31);
    const got = await api("POST", path, body);
    wroteOnTop(conv, got.version);
    const ill = { sentence: got.sentence, caption: got.caption, created: got.created, url: got.url };
    pictures.set(ill.url + "@" + ill.created, Promise.resolve("data:image/png;base64," + got.b64_json));
    m.illustration = ill;
    box.replaceChildren(figureElement(ill));
    if (!box.isConnected && state.conv === conv && !state.controller) renderMessages();  // redrawn meanwhile
  } catch (e) {
    pictureNote(box, "picture-error", e.message);
  }
  button.disabled = false;
  button.textContent = "Illustrate";
  box.removeAttribute("aria-busy");
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const msgs = state.conv ? state.conv.messages : [];
  msgs.forEach((m, i) => box.append(messageElement(m, i)));
  if (!msgs.length) {
    const hint = document.createElement("p");
    hint.className = "empty";
    hint.textContent = "Start a story: ask for one (“Write a story about a cat named Tom who finds a key.”), then " +
      "for changes (“Give it a happy ending.”, “Call the cat Max.”).";
    box.append(hint);
  }
  $("title").textContent = state.conv ? state.conv.title : "Storyteller";
  box.scrollTop = box.scrollHeight;
  updateButtons();
}

function updateButtons() {
  const busy = state.controller !== null;
  const msgs = state.conv ? state.conv.messages : [];
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("regenerate").disabled = busy || !msgs.length || msgs[msgs.length - 1].role !== "assistant";
  $("send").textContent = state.editIndex === null ? "Send" : "Send edited";
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard permission: the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  // "Copied" until the pointer or the focus leaves the button: no timer that a slow reader (or test) can miss
  button.textContent = "Copied";
  const reset = () => { button.textContent = "Copy"; };
  button.addEventListener("mouseleave", reset, { once: true });
  button.addEventListener("blur", reset, { once: true });
}

function startEdit(index) {
  if (state.controller) return;
  state.editIndex = index;
  $("prompt").value = state.conv.messages[index].content;
  $("prompt").focus();
  setStatus("Editing a message: Send replaces it and everything after it (Esc cancels).");
  updateButtons();
}

function cancelEdit() {
  state.editIndex = null;
  setStatus("");
  updateButtons();
}

// -- conversations --------------------------------------------------------------------------------

async function refreshList() {
  state.list = (await api("GET", "/api/conversations")).data;
  renderList();
}

async function openConversation(id) {
  if (state.controller) return;
  closeSidebar();
  showError("");
  cancelEdit();
  try {
    state.conv = remember(await api("GET", "/api/conversations/" + encodeURIComponent(id)));
    history.replaceState(null, "", "#" + id);
  } catch (e) {
    state.conv = null;
    showError("Could not open the conversation: " + e.message);
  }
  renderList();
  renderMessages();
}

function startRename(id) {
  if (state.controller) return;
  state.renaming = id;
  state.renameValue = null;
  state.confirming = null;
  renderList();
  const input = $("conversations").querySelector(".rename-input");
  if (input) { input.focus(); input.select(); }
}

function stopRename() {
  state.renaming = null;
  state.renameValue = null;
}

// A new title, kept on the server (PUT with the conversation's messages as they are). Blank or unchanged: nothing.
async function renameConversation(id, title) {
  stopRename();
  title = title.replace(/\s+/g, " ").trim();
  const item = state.list.find((c) => c.id === id);
  if (!title || !item || item.title === title || state.controller) { renderList(); return; }
  const was = item.title;
  item.title = title;  // shown at once; the server's list replaces it below
  renderList();
  const path = "/api/conversations/" + encodeURIComponent(id);
  const open = state.conv && state.conv.id === id ? state.conv : null;
  try {
    if (open) {
      if (state.saving) await state.saving;
      open.title = title;
      $("title").textContent = title;
      await save();
    } else {
      for (let tries = 1; ; tries++) {  // a write that came between the GET and the PUT: read it again
        const c = await api("GET", path);
        try {
          await api("PUT", path, { title, messages: plain(c.messages) }, { "If-Match": etag(c) });
          break;
        } catch (e) {
          if (e.status !== 409 || tries >= 3) throw e;
        }
      }
    }
  } catch (e) {
    if (open) open.title = was;  // not kept: the page says what the server has
    showError("Could not rename: " + e.message);
  }
  try { await refreshList(); } catch { /* the error above says enough */ }
  if (state.conv && state.conv.id === id) $("title").textContent = state.conv.title;
}

function askDelete(id) {
  if (state.controller) return;
  stopRename();
  state.confirming = id;
  renderList();
  const no = $("conversations").querySelector(".confirm .cancel");
  if (no) no.focus();
}

async function deleteConversation(id) {
  state.confirming = null;
  if (state.controller) { renderList(); return; }
  try {
    await api("DELETE", "/api/conversations/" + encodeURIComponent(id));
    if (state.conv && state.conv.id === id) { state.conv = null; history.replaceState(null, "", "#"); }
    showError("");
  } catch (e) { showError("Could not delete: " + e.message); }
  try { await refreshList(); } catch { renderList(); }
  renderMessages();
}

function newConversation() {
  if (state.controller) return;
  closeSidebar();
  state.conv = null;
  cancelEdit();
  showError("");
  history.replaceState(null, "", "#");
  renderList();
  renderMessages();
  $("prompt").focus();
}

// Every conversation on the server has a version (its ETag). The page keeps the one it last loaded or saved, with
// the title and messages it had then (conv.base): a save sends If-Match with it, and a 409 (another tab or client
// wrote meanwhile) is resolved by merged(): the page's change is re-applied to what the server has now.
function remember(conv, server = conv) {
  conv.version = server.version;
  conv.base = { title: server.title, messages: plain(server.messages) };
  followOwnWrites(conv);
  return conv;
}

function plain(messages) { return messages.map((m) => ({ role: m.role, content: m.content })); }

function etag(conv) { return '"' + conv.version + '"'; }

// A reply asked for with the conversation's id is kept by the server as it streams (a reply cut off, even with
// the page closed, is there after a reload, marked interrupted): the server's version moves meanwhile, so the
// save after it loads the conversation first and finds the server's copy at conv.kept: nothing to write when it
// is the page's text, else the page's text (what its user saw) replaces it (merged()). Returns the messages to send.
function keptReply(conv, continuing) {
  conv.kept = conv.messages.length - (continuing ? 1 : 0);
  return conv.messages;
}

// What a save sends of each message: its role and words, and "interrupted" on a reply that did not end.
function wire(messages) {
  return messages.map((m) => (m.interrupted ? { role: m.role, content: m.content, interrupted: true }
    : { role: m.role, content: m.content }));
}

function sameMessages(a, b) {
  return a.length === b.length && a.every((m, i) => m.role === b[i].role && m.content === b[i].content);
}

// A write of ours that is not a save (a rating, a picture: the messages stay as they are) made the server's
// version `version`. The page follows it when it is the next one after the page's (nobody else wrote in between),
// now or once a save that was under way has given the page the version before it; else the next save finds out.
function wroteOnTop(conv, version) {
  if (typeof version !== "number") return;
  (conv.ownWrites || (conv.ownWrites = new Set())).add(version);
  followOwnWrites(conv);
}

function followOwnWrites(conv) {
  while (conv.ownWrites && conv.version !== undefined && conv.ownWrites.has(conv.version + 1)) conv.version += 1;
}

// The page's change re-applied to `server` (the conversation as stored now): {title, messages}, or null when it
// cannot be. Ours wins the title if we changed it. Messages: unchanged here -> theirs; unchanged there (a rating, a
// picture, a title) -> ours; ours an append (a new message, a reply) -> theirs and then ours; else null.
function merged(conv, server) {
  const base = conv.base;
  if (!base) return null;
  const title = conv.title !== base.title ? conv.title : server.title;
  const mine = plain(conv.messages);
  const k = conv.kept;  // the server's copy of the reply the page asked for, cut or whole: the page's text wins
  if (k !== undefined && server.messages.length === k + 1 && server.messages[k].role === "assistant" &&
      mine.length > k && sameMessages(plain(server.messages.slice(0, k)), mine.slice(0, k))) {
    return { title, messages: conv.messages };
  }
  if (sameMessages(mine, base.messages)) return { title, messages: server.messages };
  if (sameMessages(plain(server.messages), base.messages)) return { title, messages: conv.messages };
  const n = base.messages.length;
  if (mine.length > n && sameMessages(mine.slice(0, n), base.messages)) {
    return { title, messages: [...server.messages, ...conv.messages.slice(n)] };
  }
  return null;
}

const CHANGED_ELSEWHERE = "This conversation was changed in another tab or window: the page now shows it as " +
  "saved there, and the change made here was not saved.";

// PUT with If-Match. On 409: load the conversation, re-apply the page's change (merged()) and try again; when it
// cannot be re-applied, the page takes the server's conversation and the Error says so (its `reloaded` is true).
// After a reply the server kept (conv.kept), the page loads it first: nothing to write if it is the page's already.
async function putConversation(c) {
  const path = "/api/conversations/" + encodeURIComponent(c.id);
  let server = c.kept !== undefined ? await api("GET", path) : null;
  for (let tries = 1; ; tries++) {
    if (server) {
      if (server.title === c.title && sameMessages(plain(server.messages), plain(c.messages))) return server;
      const change = merged(c, server);
      if (!change) {
        Object.assign(c, { title: server.title, messages: server.messages });
        remember(c, server);
        throw Object.assign(new Error(CHANGED_ELSEWHERE), { reloaded: true });
      }
      Object.assign(c, change);
      remember(c, server);  // the change is now one made from the server's version
    }
    try {
      return await api("PUT", path, { title: c.title, messages: wire(c.messages) }, { "If-Match": etag(c) });
    } catch (e) {
      if (e.status !== 409 || tries >= 3) throw e;
    }
    server = await api("GET", path);
  }
}

async function save() {
  const c = state.conv;
  const saving = putConversation(c);
  state.saving = saving.catch(() => {});  // a rating waits for it: the reply it rates must be on the server
  const saved = await saving;
  remember(c, saved);
  delete c.kept;
  c.updated = saved.updated;
  // the server's ratings and earlier tries (a regenerated reply's predecessor) of the messages as saved
  saved.messages.forEach((s, i) => {
    const m = c.messages[i];
    if (!m || m.role !== s.role || m.content !== s.content) return;
    for (const key of ["rating", "rated", "alternatives", "interrupted"]) {
      if (key in s) m[key] = s[key]; else delete m[key];
    }
  });
}

// -- a reply ---------------------------------------------------------------------------------------

// Conversations whose user was told that their oldest turns no longer fit the context (once each).
const toldDropped = new Set();
// The model's context in tokens, from /v1/models (its max_model_len) at start-up; null until then (or if unknown).
let contextTokens = null;
function droppedNotice() {
  const context = contextTokens ? contextTokens + "-token context" : "context";
  return "The oldest turns no longer fit the storyteller's " + context + "; it now reads only the latest ones.";
}

async function loadContextSize() {
  try {
    const models = (await api("GET", "/v1/models")).data || [];
    const card = models.find((m) => m.id === MODEL) || models[0];
    if (card && Number.isInteger(card.max_model_len) && card.max_model_len > 0) contextTokens = card.max_model_len;
  } catch {
    contextTokens = null;  // the notice then names no number
  }
}

// `continuing`: more of the last message (a reply cut off or stopped: its Continue button), not a new reply.
async function reply(continuing = false) {
  const conv = state.conv;
  const assistant = continuing ? conv.messages[conv.messages.length - 1] : { role: "assistant", content: "" };
  const controller = new AbortController();
  state.controller = controller;
  showError("");
  setStatus("The storyteller is writing…");
  renderMessages();
  let resp;
  try {
    resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: MODEL, messages: keptReply(conv, continuing), stream: true, truncation: "auto",
        conversation: conv.id,  // the server keeps the reply in it as it streams (see keptReply())
        continue_final_message: continuing || undefined,
        stream_options: { include_usage: true },  // its usage says how many old messages were left out
        temperature: parseFloat($("temperature").value),
      }),
    });
  } catch (e) {
    state.controller = null;
    setStatus("");
    return { ok: false, error: e.name === "AbortError" ? "" : "The server cannot be reached: " + e.message };
  }
  if (!resp.ok) {
    state.controller = null;
    setStatus("");
    return { ok: false, error: "The server refused the request: " + (await errorText(resp)) };
  }
  if (!continuing) conv.messages.push(assistant);
  delete assistant.interrupted;  // its note and Continue go while it streams
  renderMessages();
  const bubble = $("messages").lastElementChild;
  bubble.classList.add("streaming");
  const text = bubble.querySelector(".text");
  let finish = null;
  let broke = "";  // why the stream ended early: kept, shown after anything that fails later
  let done = false;  // the server's [DONE]: a stream that just stops before it was cut
  let dropped = false;  // the server left the oldest messages out (truncation "auto")
  try {
    for await (const data of sseEvents(resp)) {
      if (data === "[DONE]") { done = true; break; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage && chunk.usage.dropped_messages > 0) dropped = true;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        assistant.content += choice.delta.content;
        text.replaceChildren(markdown(assistant.content));
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name !== "AbortError") broke = "The reply broke off: " + e.message;
  }
  if (!done && !broke && !controller.signal.aborted) broke = "The reply broke off: the server stopped sending it.";
  if (!done) assistant.interrupted = true;  // cut off or stopped: its Continue button asks for more of it
  state.controller = null;
  bubble.classList.remove("streaming");
  const stopped = controller.signal.aborted;
  const notice = dropped && !toldDropped.has(conv.id) ? droppedNotice() : "";
  if (notice) toldDropped.add(conv.id);
  setStatus(stopped ? "Stopped." : finish === "length" ? `Stopped at the length limit. ${notice}`.trim() : notice);
  updateButtons();  // Send back, Stop gone, whatever happens next
  if (broke) showError(broke);
  return { ok: true, error: broke };
}

// Under a reply that did not end (cut off, stopped, or left so by a server that died): a line and Continue.
function interruptedNote() {
  const note = document.createElement("div");
  note.className = "interrupted";
  note.setAttribute("data-testid", "interrupted");
  note.append("This reply stopped before its end. ",
    button("continue", "Continue", "continue", () => continueReply()));
  return note;
}

// More of the last reply, in the same message: the page's words are saved first (the server continues what it
// has), then the new ones stream in and are saved.
async function continueReply() {
  const msgs = state.conv && state.conv.messages;
  if (state.controller || !msgs || !msgs.length || msgs[msgs.length - 1].role !== "assistant") return;
  showError("");
  let problem = "";
  try {
    await save();
    const r = await reply(true);
    problem = r.error;
    await save();
  } catch (e) {
    problem = unsaved(problem, e);
  }
  await afterReply(problem);
}

async function send(event) {
  if (event) event.preventDefault();
  if (state.controller) return;
  const content = $("prompt").value.trim();
  if (!content) return;
  showError("");
  let problem = "";
  try {
    if (!state.conv) {
      const title = content.replace(/\s+/g, " ").slice(0, 48);
      state.conv = remember(await api("POST", "/api/conversations", { title }));
      history.replaceState(null, "", "#" + state.conv.id);
    }
    const before = state.conv.messages.slice();
    if (state.editIndex !== null) state.conv.messages = state.conv.messages.slice(0, state.editIndex);
    state.editIndex = null;
    state.conv.messages.push({ role: "user", content });
    $("prompt").value = "";
    try {
      await save();
    } catch (e) {  // not kept: the message goes back in the box (the page shows the server's messages if reloaded)
      if (!e.reloaded) state.conv.messages = before;
      $("prompt").value = content;
      throw e;
    }
    await refreshList().catch(() => {});  // the list shows the new conversation; done again at the end
    const r = await reply();
    problem = r.error;
    if (!r.ok) {  // nothing was answered: take the message back, keep what it replaced
      state.conv.messages = before;
      $("prompt").value = content;
    }
    await save();
  } catch (e) {
    problem = unsaved(problem, e);
  }
  await afterReply(problem);
}

// What went wrong first, and that the save after it failed too (the page keeps it: the next message saves it).
function unsaved(problem, e) {
  return problem ? problem + " Not saved yet: " + e.message : e.message;
}

// The end of send() and regenerate(), whatever happened: the list and messages redrawn, Send back, and the first
// thing that went wrong shown (a reply that broke off, not the "Failed to fetch" of the save after it).
async function afterReply(problem) {
  try {
    await refreshList();
  } catch (e) {
    problem = problem || "The server cannot be reached: " + e.message;
  }
  renderMessages();
  showError(problem || "");
}

async function regenerate() {
  const msgs = state.conv && state.conv.messages;
  if (state.controller || !msgs || !msgs.length || msgs[msgs.length - 1].role !== "assistant") return;
  const previous = msgs.pop();
  const r = await reply();
  let problem = r.error;
  if (!r.ok) msgs.push(previous);
  try { await save(); } catch (e) { problem = unsaved(problem, e); }
  await afterReply(problem);
}

// -- wiring ----------------------------------------------------------------------------------------

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  if (e.key === "Escape" && state.editIndex !== null) { $("prompt").value = ""; cancelEdit(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("regenerate").addEventListener("click", regenerate);
$("new-chat").addEventListener("click", newConversation);
$("menu").addEventListener("click", () => showSidebar(!document.body.classList.contains("sidebar-open")));
$("scrim").addEventListener("click", closeSidebar);
window.matchMedia("(min-width: 641px)").addEventListener("change", closeSidebar);  // wide again: no overlay
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) { closeSidebar(); $("menu").focus(); }
});
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

(async function start() {
  try {
    await refreshList();
    await loadContextSize();  // after the list: a server with a key has asked for it by now
    const id = location.hash.slice(1);
    if (id && state.list.some((c) => c.id === id)) await openConversation(id);
    else renderMessages();
  } catch (e) {
    showError(e.message);
    renderMessages();
  }
})();
