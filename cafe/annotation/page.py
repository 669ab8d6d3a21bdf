"""The labelling page of `cafe annotate`: one self-contained HTML document (inline CSS and JS, no network but the
server it came from). It reads the token from its own URL and sends it with every request."""

from __future__ import annotations

STYLE = """
* { box-sizing: border-box; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f4f5f7; }
header { display: flex; align-items: baseline; gap: 1.2em; padding: 0.6em 1.2em; background: #1d2430; color: #fff; }
header h1 { font-size: 1.25em; margin: 0; }
header .file { margin-left: auto; color: #aab3c0; font-size: 0.85em; }
#progress { font-weight: 600; }
.badge { background: #e8a33d; color: #1d2430; border-radius: 4px; padding: 1px 7px; font-size: 0.8em;
         font-weight: 700; }
#strip { display: flex; flex-wrap: wrap; gap: 2px; padding: 6px 1.2em; background: #fff;
         border-bottom: 1px solid #dde1e6; }
#strip a { width: 14px; height: 14px; border-radius: 2px; background: #dde1e6; cursor: pointer; }
#strip a.yes { background: #c0392b; } #strip a.no { background: #2e86c1; } #strip a.unsure { background: #b7950b; }
#strip a.here { outline: 2px solid #1d2430; outline-offset: 1px; }
main { display: flex; gap: 1.2em; padding: 1em 1.2em; align-items: flex-start; }
#targets { flex: 1; display: grid; grid-template-columns: repeat(auto-fill, minmax(430px, 1fr)); gap: 0.8em; }
.card { background: #fff; border-radius: 6px; padding: 0.5em; box-shadow: 0 1px 2px #0002; }
.card .cap { font-size: 0.8em; color: #4a5563; margin-bottom: 0.3em; }
.triple { display: grid; grid-template-columns: repeat(3, 1fr); gap: 4px; }
.view { position: relative; }
.view img { width: 100%; display: block; border-radius: 3px; background: #000; }
.view svg { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
.view .lab { font-size: 0.72em; color: #6b7480; text-align: center; }
aside { width: 330px; position: sticky; top: 1em; background: #fff; border-radius: 6px; padding: 1em;
        box-shadow: 0 1px 2px #0002; }
aside h2 { font-size: 1.05em; margin: 0 0 0.3em; }
aside p { margin: 0.3em 0 0.8em; font-size: 0.85em; color: #4a5563; }
.buttons { display: grid; gap: 6px; }
button { font: inherit; padding: 0.55em; border: 2px solid #c9ced6; border-radius: 5px; background: #fff;
         cursor: pointer; text-align: left; }
button kbd { display: inline-block; min-width: 1.6em; text-align: center; font-weight: 700; background: #eef0f3;
             border-radius: 3px; margin-right: 0.5em; }
button.chosen.yes { border-color: #c0392b; background: #fbeae8; }
button.chosen.no { border-color: #2e86c1; background: #e8f2fa; }
button.chosen.unsure { border-color: #b7950b; background: #fbf5e0; }
textarea { width: 100%; font: inherit; font-size: 0.9em; margin-top: 0.8em; min-height: 4.2em; }
#saved { font-size: 0.8em; color: #1e8449; min-height: 1.2em; }
#score { font-size: 0.85em; padding: 0.4em; background: #fdf2e9; border-radius: 4px; margin-top: 0.6em; }
#error { display: none; background: #c0392b; color: #fff; padding: 0.6em 1.2em; white-space: pre-wrap; }
.keys { font-size: 0.8em; color: #6b7480; margin-top: 0.8em; }
.legend { font-size: 0.8em; color: #4a5563; padding: 0 1.2em; }
"""

SCRIPT = """
const token = new URLSearchParams(location.search).get('token') || '';
let state = null, here = 0;
const $ = (id) => document.getElementById(id);
const q = (path) => path + (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);

function marks(t, grid) {
  const m = [];
  if (t.act_peak) {
    const [r, c] = t.act_peak;
    m.push(`<circle cx="${c + .5}" cy="${r + .5}" r=".42" fill="none" stroke="#000" stroke-width=".22"/>`,
           `<circle cx="${c + .5}" cy="${r + .5}" r=".42" fill="none" stroke="#fff" stroke-width=".11"/>`);
  }
  const [r, c] = t.erf_peak, d = .3, x = c + .5, y = r + .5;
  for (const [w, col] of [[.24, '#000'], [.12, '#3ff']]) {
    m.push(`<path d="M${x - d} ${y - d}L${x + d} ${y + d}M${x - d} ${y + d}L${x + d} ${y - d}" stroke="${col}" ` +
           `stroke-width="${w}" stroke-linecap="round"/>`);
  }
  return `<svg viewBox="0 0 ${grid} ${grid}" preserveAspectRatio="none">${m.join('')}</svg>`;
}

function view(f, slot, kind, label, t) {
  const svg = kind === 'image' ? '' : marks(t, state.grid);
  return `<div class="view"><img alt="${label}" src="${q(`/img/${f.feature}/${slot}/${kind}.png`)}">${svg}` +
         `<div class="lab">${label}</div></div>`;
}

function card(f, t, slot) {
  const at = t.at === 'CLS' ? 'fires at the CLS token' : `peak at patch ${t.at}`;
  return `<div class="card"><div class="cap">#${slot + 1} · image ${t.image} · activation ${t.value} · ${at}</div>` +
         `<div class="triple">${view(f, slot, 'image', 'image', t)}${view(f, slot, 'act', 'activation ○', t)}` +
         `${view(f, slot, 'erf', 'ERF ×', t)}</div></div>`;
}

function progress() {
  const done = state.features.filter((f) => f.answer !== '').length;
  $('progress').textContent = `${done} / ${state.features.length} answered`;
  $('strip').querySelectorAll('a').forEach((a, i) => {
    a.className = (state.features[i].answer || '') + (i === here ? ' here' : '');
  });
  return done;
}

function show(i) {
  here = Math.max(0, Math.min(state.features.length - 1, i));
  const f = state.features[here];
  $('title').textContent = `Layer ${state.layer} · feature ${f.feature}`;
  $('position').textContent = `(${here + 1} of ${state.features.length})`;
  $('cls').style.display = f.cls_only ? '' : 'none';
  $('targets').innerHTML = f.targets.map((t, slot) => card(f, t, slot)).join('');
  document.querySelectorAll('button[data-answer]').forEach((b) => {
    b.classList.toggle('chosen', b.dataset.answer === f.answer);
  });
  $('note').value = f.note;
  $('saved').textContent = f.answer ? `saved: ${f.answer}` : '';
  $('score').style.display = state.show_score ? '' : 'none';
  if (state.show_score) $('score').textContent = f.score === null ? 'automatic score: none (no valid target)' :
    `automatic score ${f.score.toFixed(2)}: suggests ${f.suggested} (threshold ${state.threshold})`;
  progress();
  const next = state.features[here + 1];
  if (next) next.targets.forEach((t, slot) => ['image', 'act', 'erf'].forEach((k) => {
    new Image().src = q(`/img/${next.feature}/${slot}/${k}.png`);
  }));
}

function fail(message) { $('error').style.display = 'block'; $('error').textContent = message; }

async function send(change) {
  const f = state.features[here];
  const response = await fetch('/api/answer', {
    method: 'POST', headers: {'Content-Type': 'application/json', 'X-Cafe-Token': token},
    body: JSON.stringify({feature: f.feature, ...change}),
  });
  const body = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) { fail(`not saved: ${body.error}`); return false; }
  $('error').style.display = 'none';
  Object.assign(f, body.feature);
  return true;
}

async function answer(value) {
  const at = here;
  if (!(await send({answer: value}))) return;
  if (progress() === state.features.length && at === state.features.length - 1) {
    $('saved').textContent = 'all features answered: thank you';
    show(at);
  } else {
    show(value === '' ? at : at + 1);
  }
}

async function saveNote() {
  const f = state.features[here];
  if ($('note').value === f.note) return;
  if (await send({note: $('note').value})) $('saved').textContent = 'note saved';
}

document.addEventListener('keydown', (e) => {
  if (e.target.tagName === 'TEXTAREA') {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); e.target.blur(); }
    if (e.key === 'Escape') e.target.blur();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = {y: 'yes', n: 'no', u: 'unsure', Backspace: ''};
  if (e.key in keys) { e.preventDefault(); answer(keys[e.key]); }
  else if (e.key === 'ArrowRight') show(here + 1);
  else if (e.key === 'ArrowLeft') show(here - 1);
  else if (e.key === 'e') { e.preventDefault(); $('note').focus(); }
});

async function start() {
  const response = await fetch(q('/api/state'));
  if (!response.ok) { fail('could not load the features: ' + (await response.text())); return; }
  state = await response.json();
  $('file').textContent = state.file;
  $('strip').innerHTML = state.features.map((f, i) => `<a title="feature ${f.feature}" data-i="${i}"></a>`).join('');
  $('strip').addEventListener('click', (e) => { if (e.target.dataset.i) show(+e.target.dataset.i); });
  document.querySelectorAll('button[data-answer]').forEach((b) => {
    b.addEventListener('click', () => answer(b.dataset.answer));
  });
  $('note').addEventListener('change', saveNote);
  const first = state.features.findIndex((f) => f.answer === '');
  show(first < 0 ? 0 : first);
}
start();
"""

BODY = """<header><h1 id="title">loading…</h1><span id="position"></span>
<span class="badge" id="cls" style="display:none" title="this feature fires only at the class token">CLS-only</span>
<span id="progress"></span><span class="file" id="file"></span></header>
<div id="error"></div>
<div id="strip"></div>
<main><div id="targets"></div>
<aside><h2>Is this feature non-local?</h2>
<p>Non-local: where it fires (activation ○) is spatially inconsistent with what caused it (ERF ×).
Local: the ERF sits on the activated patches.</p>
<div class="buttons">
<button class="yes" data-answer="yes"><kbd>y</kbd>non-local</button>
<button class="no" data-answer="no"><kbd>n</kbd>local</button>
<button class="unsure" data-answer="unsure"><kbd>u</kbd>unsure / skip</button></div>
<textarea id="note" placeholder="note (optional; e to type, Enter to save)"></textarea>
<div id="saved"></div><div id="score" style="display:none"></div>
<div class="keys"><kbd>←</kbd> <kbd>→</kbd> move · <kbd>Backspace</kbd> clear the answer ·
every answer is saved to the file at once</div></aside></main>
<p class="legend">Each card: a top image, its activation map (○ its peak) and its ERF ({method}, × its peak).</p>
"""


def render_page(layer: int, method: str) -> str:
    """The page's HTML (everything inline; data come from /api/state)."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cafe annotate · layer {layer}</title>'
        f"<style>{STYLE}</style></head><body>{BODY.format(method=method)}<script>{SCRIPT}</script></body></html>"
    )
