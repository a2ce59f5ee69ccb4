"""The service's page for people (`GET /ui`, text models): paste texts (one per line) or
upload a CSV with a `text` column, see each text's label and probability, download the
scored CSV. Everything runs in the browser against the service's own /metadata and /predict
(with the bearer token typed into the page when the service has one); nothing is stored.
`#texts=<url-encoded lines>` in the address fills the box and scores at once (a link that
shows a result, and how the test drives the page in headless Chromium)."""

PAGE_COLUMNS = ["text"]  # the rows a model must take for the page (a text classifier's scorer)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>recsmith: score texts</title><link rel="icon" href="data:,">
<style>
body{font:15px system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
textarea{width:100%;height:9rem;font:inherit}
table{border-collapse:collapse;width:100%;margin-top:1rem}
td,th{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
td.p{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:.5rem;background:#4a7bd0;display:inline-block}
#status{color:#555;margin:.5rem 0} .error{color:#b00020}
</style></head><body>
<h1>Score texts</h1>
<div id="model">loading the model's description…</div>
<p><label>Texts, one per line:<br>
<textarea id="texts" placeholder="a wonderful, moving film&#10;a tedious mess"></textarea></label></p>
<p><label>or a CSV file with a <code>text</code> column: <input type="file" id="file" accept=".csv,text/csv"></label></p>
<form id="controls"><label>Token (if the service asks for one):
<input type="password" id="token" autocomplete="off"></label>
<button id="score" type="submit">Score</button> <a id="download" hidden download="scored.csv">download the scored CSV</a></form>
<div id="status"></div>
<table id="results" hidden><thead><tr><th>text</th><th>label</th><th>probability</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
let meta = null, scored = [];
const $ = (id) => document.getElementById(id);
function headers() {
  const h = {"Content-Type": "application/json"}, token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}
function say(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
async function loadMeta() {
  const r = await fetch("metadata", {headers: headers()});
  if (!r.ok) { $("model").textContent = "enter the service's token, then Score (" + r.status + ")"; return false; }
  meta = await r.json();
  $("model").textContent = "model " + (meta.model || meta.name || "") + ": classes " + meta.outputs.join(", ");
  return true;
}
function parseCsv(text) {  // RFC 4180: quoted fields may hold commas, quotes ("") and newlines
  const rows = [[]]; let field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    }
    else if (c === '"') quoted = true;
    else if (c === ",") { rows[rows.length - 1].push(field); field = ""; }
    else if (c === "\\n" || c === "\\r") {
      if (c === "\\r" && text[i + 1] === "\\n") i++;
      rows[rows.length - 1].push(field); field = ""; rows.push([]);
    }
    else field += c;
  }
  rows[rows.length - 1].push(field);
  return rows.filter((r) => r.length > 1 || r[0] !== "");
}
async function textsToScore() {
  const file = $("file").files[0];
  if (!file) return $("texts").value.split("\\n").map((t) => t.trim()).filter((t) => t);
  const rows = parseCsv(await file.text()), column = rows[0].indexOf("text");
  if (column < 0) throw new Error(file.name + " has no 'text' column (its header: " + rows[0].join(", ") + ")");
  return rows.slice(1).map((r) => r[column] ?? "");
}
function csvField(value) { const s = String(value); return /[",\\n\\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
function render() {
  const body = $("results").querySelector("tbody"); body.replaceChildren();
  for (const row of scored) {
    const tr = document.createElement("tr");
    const cells = [row.text, row.label, row.probability.toFixed(4)];
    cells.forEach((value, i) => {
      const td = document.createElement("td"); td.textContent = value;
      if (i === 2) td.className = "p";
      tr.append(td);
    });
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = (row.probability * 6) + "rem";
    tr.lastChild.append(" ", bar);
    body.append(tr);
  }
  $("results").hidden = scored.length === 0;
  const lines = [["text", "label", ...meta.outputs.map((o) => "prob_" + o)].join(",")]
    .concat(scored.map((r) => [r.text, r.label, ...r.probs].map(csvField).join(",")));
  $("download").href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {type: "text/csv"}));
  $("download").hidden = scored.length === 0;
}
async function score() {
  try {
    if (!meta && !(await loadMeta())) return;
    const texts = await textsToScore();
    if (texts.length === 0) { say("nothing to score: paste texts or choose a CSV", true); return; }
    scored = []; const size = meta.max_batch || 100;
    for (let start = 0; start < texts.length; start += size) {
      say("scoring " + Math.min(start + size, texts.length) + " of " + texts.length + "…");
      const rows = texts.slice(start, start + size).map((text) => ({text}));
      const r = await fetch("predict", {method: "POST", headers: headers(), body: JSON.stringify({rows})});
      const answer = await r.json();
      if (!r.ok) throw new Error(answer.detail || ("the service answered " + r.status));
      rows.forEach((row, i) => {
        const probs = meta.outputs.map((o) => answer.predictions[o][i]);
        const best = probs.indexOf(Math.max(...probs));
        scored.push({text: row.text, label: meta.outputs[best], probability: probs[best], probs});
      });
    }
    say("scored " + scored.length + " text(s)");
    render();
  } catch (error) { say(String(error.message || error), true); }
}
$("controls").addEventListener("submit", (event) => { event.preventDefault(); score(); });
const shared = new URLSearchParams(location.hash.slice(1)).get("texts");
loadMeta().then(() => { if (shared) { $("texts").value = shared; score(); } });
</script></body></html>
"""
