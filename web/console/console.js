// The cluster console: reads the router admin port's JSON API (documented
// in docs/console.md) once a second, draws the ring in SVG, and previews
// and applies ring changes. No framework, no build step.
const API = '../api/v1/';
const POLL_MS = 1000;
const SVGNS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const state = { cluster: null, edges: null, preview: null, request: null, watch: null, error: null };
window.pushConsole = state; // for the curious (and the browser test)

// pct formats a fraction as pushctl does ("%.2f%%").
const pct = (f) => (100 * f).toFixed(2) + '%';
const rate = (r) => (r == null ? '–' : r < 10 ? r.toFixed(1) : Math.round(r).toString());
const color = (id) => `hsl(${(id * 137.508) % 360} 58% 52%)`;

async function getJSON(path) {
  const res = await fetch(API + path, { cache: 'no-store' });
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

async function postJSON(path, body) {
  const headers = { 'Content-Type': 'application/json' };
  const token = $('token').value.trim();
  if (token) headers.Authorization = 'Bearer ' + token;
  const res = await fetch(API + path, { method: 'POST', headers, body: JSON.stringify(body) });
  const out = await res.json().catch(() => ({ error: res.statusText }));
  return { status: res.status, body: out };
}

function el(tag, attrs = {}, ...kids) {
  const ns = ['svg', 'path', 'circle', 'text', 'g', 'title', 'line'].includes(tag) ? SVGNS : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.setAttribute('class', v);
    else if (k === 'text') e.textContent = v;
    else if (k === 'bg') e.style.background = v; // CSSOM: the page's CSP forbids style attributes
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

// memberStatus is "live", "draining" or "down" (no lease) for the dot.
function memberStatus(m) {
  if (!m.live && !m.alive) return 'down';
  return m.state === 'draining' || (m.lease && m.lease.state === 'draining') ? 'draining' : 'live';
}

// arc is the SVG path of a ring segment from angle a0 to a1 (radians,
// 0 = top, clockwise) between radii r0 and r1.
function arc(a0, a1, r0, r1) {
  if (a1 - a0 >= 2 * Math.PI - 1e-9) a1 = a0 + 2 * Math.PI - 1e-4;
  const p = (a, r) => `${(r * Math.sin(a)).toFixed(2)} ${(-r * Math.cos(a)).toFixed(2)}`;
  const large = a1 - a0 > Math.PI ? 1 : 0;
  return `M ${p(a0, r1)} A ${r1} ${r1} 0 ${large} 1 ${p(a1, r1)} L ${p(a1, r0)} A ${r0} ${r0} 0 ${large} 0 ${p(a0, r0)} Z`;
}

// drawRing draws the members around the key space, each arc as long as its
// share; with a preview, a second ring outside shows the shares after.
function drawRing() {
  const svg = $('ring');
  const c = state.cluster;
  if (!c) return;
  svg.replaceChildren();
  const p = state.preview;
  const [r0, r1] = p ? [80, 122] : [95, 150];
  const members = c.members;
  let a = 0;
  const labelAt = [];
  for (const m of members) {
    const st = memberStatus(m);
    const len = m.share * 2 * Math.PI;
    const g = el('g', { class: 'member', 'data-id': m.id, 'data-share': m.share, 'data-status': st });
    if (len > 0) {
      g.append(el('path', { class: `arc now ${m.state} ${st === 'down' ? 'down' : ''}`, d: arc(a, a + len, r0, r1), fill: color(m.id) },
        el('title', { text: `${m.name} (id ${m.id}): ${pct(m.share)} of the key space, ${m.state}, ${st}` })));
    }
    const mid = a + len / 2;
    g.append(el('circle', { class: `dot ${st}`, r: 5, cx: ((r1 + 9) * Math.sin(mid)).toFixed(1), cy: (-(r1 + 9) * Math.cos(mid)).toFixed(1) }));
    labelAt.push({ m, mid });
    svg.append(g);
    a += len;
  }
  if (p) {
    let b = 0;
    for (const row of p.members) {
      const len = row.after * 2 * Math.PI;
      if (len <= 0) continue;
      svg.append(el('path', { class: 'arc after', 'data-id': row.id, 'data-after': row.after, d: arc(b, b + len, 140, 172), fill: color(row.id) },
        el('title', { text: `${row.name} after: ${pct(row.after)} (before ${pct(row.before)})` })));
      const mid = b + len / 2;
      svg.append(el('text', { class: 'after-label', x: (188 * Math.sin(mid)).toFixed(1), y: (-188 * Math.cos(mid) + 4).toFixed(1),
        'text-anchor': Math.sin(mid) >= 0 ? 'start' : 'end', text: `${row.name} ${pct(row.after)}` }));
      b += len;
    }
  } else {
    for (const { m, mid } of labelAt) {
      const r = r1 + 24;
      svg.append(el('text', { class: 'label', 'data-id': m.id, x: (r * Math.sin(mid)).toFixed(1), y: (-r * Math.cos(mid) + 4).toFixed(1),
        'text-anchor': Math.sin(mid) >= 0.05 ? 'start' : Math.sin(mid) <= -0.05 ? 'end' : 'middle', text: `${m.name} ${pct(m.share)}` }));
    }
  }
  const center = p
    ? [el('text', { class: 'center', y: -10, text: `v${p.version} → v${p.next_version}` }),
       el('text', { class: 'center big', y: 14, text: pct(p.moved_fraction) }),
       el('text', { class: 'center', y: 32, text: 'of users move' })]
    : [el('text', { class: 'center', y: -10, text: `ring v${c.version}` }),
       el('text', { class: 'center big', y: 14, text: `${members.length} members` }),
       el('text', { class: 'center', y: 32, text: `${state.edges ? state.edges.totals.connections : c.users} users` })];
  svg.append(...center);
  $('legend-preview').hidden = !p;
}

function edgeOf(id) {
  return state.edges ? state.edges.edges.find((e) => e.id === id) : undefined;
}

function drawMembers() {
  const c = state.cluster;
  const body = $('members').tBodies[0];
  body.replaceChildren();
  for (const m of c.members) {
    const e = edgeOf(m.id);
    const st = memberStatus(m);
    const lease = m.lease ? m.lease.state : (c.liveness ? 'none' : '–');
    body.append(el('tr', { 'data-id': m.id },
      el('td', { text: m.id }),
      el('td', {}, el('span', { class: 'swatch', bg: color(m.id) }), m.name),
      el('td', { class: 'state-' + (st === 'down' ? 'down' : m.state), text: st === 'down' ? `${m.state}, no lease` : m.state }),
      el('td', { text: m.weight }),
      el('td', { class: 'share', text: pct(m.share) }),
      el('td', { class: 'lease', text: lease, title: m.lease ? `incarnation ${m.lease.incarnation}; ${m.lease.users} users at its last renewal` : null }),
      el('td', { class: 'connections', text: e && !e.error ? e.connections : (m.lease ? m.lease.users : '–') }),
      el('td', { class: 'pubs', text: e ? rate(e.publishes_per_s) : '–' }),
      el('td', { class: 'moves', text: e ? rate(e.moves_per_s) : '–' }),
      el('td', { class: 'guests', text: e && !e.error ? e.guests : '–' }),
      el('td', { class: 'fenced', text: e && !e.error ? (e.fenced ? 'yes' : 'no') : '–' })));
  }
  const unl = c.unlisted || [];
  $('unlisted').hidden = unl.length === 0;
  $('unlisted').textContent = unl.length ? `Live edges not in the ring: ${unl.map((l) => `id ${l.id} (${l.users} users)`).join(', ')}.` : '';
}

function drawFacts() {
  const c = state.cluster;
  $('fact-version').textContent = `v${c.version} ${c.algorithm}`;
  $('fact-store').textContent = c.store_reachable ? (c.liveness ? 'reachable, leases' : 'reachable, no leases') : 'unreachable';
  const e = state.edges;
  $('fact-users').textContent = e ? e.totals.connections : c.users;
  $('fact-pubs').textContent = e ? rate(e.totals.publishes_per_s) : '–';
  $('fact-moves').textContent = e ? `${rate(e.totals.moves_per_s)}${e.totals.guests ? `, ${e.totals.guests} guests` : ''}${e.totals.fenced ? `, ${e.totals.fenced} fenced` : ''}` : '–';
  $('token-label').hidden = !c.token_required;
}

function drawPreview() {
  const p = state.preview;
  $('preview').hidden = !p;
  if (!p) return;
  $('preview-moved').textContent = pct(p.moved_fraction);
  $('preview-moved-keys').textContent = `(${p.moved} of ${p.keys} keys uid-0..uid-${p.keys - 1})`;
  $('preview-ideal').textContent = pct(p.ideal_fraction);
  $('preview-users').textContent = `${p.users_moving} of ${p.users_connected}`;
  $('preview-refused').hidden = !p.refused;
  $('preview-refused').textContent = p.refused ? 'Apply would be refused: ' + p.refused : '';
  const body = $('preview-table').tBodies[0];
  body.replaceChildren();
  for (const r of p.members) {
    body.append(el('tr', { 'data-id': r.id, class: r.change ? 'changed' : null },
      el('td', { text: r.id }),
      el('td', {}, el('span', { class: 'swatch', bg: color(r.id) }), r.name),
      el('td', { class: 'state-' + r.state, text: r.state }),
      el('td', { text: r.weight }),
      el('td', { class: 'before', text: pct(r.before) }),
      el('td', { class: 'after', text: pct(r.after) }),
      el('td', { class: 'change', text: r.change || '' })));
  }
  $('preview-text').textContent = p.text;
}

function drawWatch() {
  const w = state.watch;
  if (!w || !state.edges) return;
  const moved = state.edges.edges.reduce((s, e) => s + (e.moved_total || 0), 0) - w.movedBase;
  $('result').textContent = `Applied: ring v${w.from} → v${w.to}. Users moved since: ${Math.max(moved, 0)}; moving now ${rate(state.edges.totals.moves_per_s)}/s.`;
  $('result').dataset.moved = Math.max(moved, 0);
}

function draw() {
  if (!state.cluster) return;
  drawFacts();
  drawRing();
  drawMembers();
  drawPreview();
  drawWatch();
}

async function poll() {
  try {
    const [c, e] = await Promise.all([getJSON('cluster'), getJSON('edges')]);
    state.cluster = c;
    state.edges = e;
    $('conn').dataset.state = 'ok';
    $('conn').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (err) {
    $('conn').dataset.state = 'error';
    $('conn').textContent = 'API unreachable: ' + err.message;
  }
  draw();
}

// change reads the form into one change of the API.
function change() {
  const op = $('op').value;
  const id = Number($('id').value);
  if (op === 'add') {
    return { op, member: { id, name: $('name').value.trim(), ws: $('ws').value.trim(), grpc: $('grpc').value.trim(), weight: Number($('weight').value) || 1 } };
  }
  if (op === 'weight') return { op, id, weight: Number($('weight').value) };
  return { op, id };
}

function showOp() {
  const op = $('op').value;
  for (const n of document.querySelectorAll('[data-for]')) n.hidden = !n.dataset.for.split(' ').includes(op);
  state.preview = null;
  $('apply-btn').disabled = true;
  draw();
}

function result(text, error) {
  $('result').hidden = false;
  $('result').textContent = text;
  $('result').classList.toggle('error', !!error);
}

async function preview(ev) {
  ev.preventDefault();
  state.watch = null;
  const req = { changes: [change()] };
  $('preview-btn').disabled = true;
  try {
    const { status, body } = await postJSON('ring/preview', req);
    if (status !== 200) {
      state.preview = null;
      result(`Preview refused (${status}): ${body.error}`, true);
    } else {
      state.preview = body;
      state.request = req;
      $('result').hidden = true;
    }
  } finally {
    $('preview-btn').disabled = false;
  }
  $('apply-btn').disabled = !state.preview;
  draw();
}

async function apply() {
  const p = state.preview;
  if (!p) return;
  $('apply-btn').disabled = true;
  const movedBase = state.edges ? state.edges.edges.reduce((s, e) => s + (e.moved_total || 0), 0) : 0;
  const { status, body } = await postJSON('ring/apply', { version: p.version, changes: state.request.changes, force: $('force').checked });
  if (status === 200) {
    state.preview = null;
    state.watch = { from: body.version, to: body.next_version, movedBase };
    result(`Applied: ring v${body.version} → v${body.next_version}.`);
    await poll();
    return;
  }
  const why = status === 409 ? `the ring changed meanwhile (now v${body.version}): preview again`
    : status === 401 ? 'this needs the admin token' : body.error;
  result(`Not applied (${status}): ${why}`, true);
  if (status !== 409) $('apply-btn').disabled = false;
}

$('change-form').addEventListener('submit', preview);
$('apply-btn').addEventListener('click', apply);
$('op').addEventListener('change', showOp);
$('token').value = sessionStorage.getItem('push-console-token') || '';
$('token').addEventListener('change', () => sessionStorage.setItem('push-console-token', $('token').value));
showOp();
// One poll at a time: the next starts a second after the last answered
// (a slow admin port is not sent a growing queue of requests).
(async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
})();
