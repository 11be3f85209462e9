// The demo page: pick a user, watch the connection and the messages, publish
// to anyone. Query parameters (used by the browser tests): uid=NAME connects
// at once, share=worker|leader|none picks tab sharing, token=JWT uses that
// token instead of asking the dev token endpoint.
import { connect } from '/push.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_ROWS = 200;

// What the page shows, also for tests to read (window.pushDemo).
const demo = { client: null, messages: [], states: [], gaps: [], config: null };
window.pushDemo = demo;

// The empty list's hint, shown until the first message of each connection
// (connecting alone does not remove it).
const emptyHint = $('messages').querySelector('.empty').cloneNode(true);

async function postJSON(path, body) {
  const res = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  let v = null;
  try { v = JSON.parse(text); } catch {}
  if (!res.ok) throw new Error((v && v.error) || text.trim() || 'HTTP ' + res.status);
  return v;
}

async function config() {
  if (!demo.config) {
    const res = await fetch('/config');
    demo.config = await res.json();
  }
  return demo.config;
}

const describe = {
  idle: () => 'not connected',
  connecting: (s) => 'connecting' + (s.transport ? ' (' + s.transport + ')' : ''),
  open: (s) => 'connected over ' + s.transport,
  reconnecting: (s) => 'reconnecting in ' + (s.delay / 1000).toFixed(1) + ' s',
  stopped: (s) => ({ unauthorized: 'auth error', replaced: 'replaced by another connection',
    kicked: 'kicked', closed: 'disconnected', unsupported: 'unsupported browser' })[s.reason] || 'stopped',
};

function showState(s) {
  const el = $('status');
  el.dataset.state = s.state;
  el.dataset.reason = s.reason || '';
  $('state-text').textContent = (describe[s.state] || (() => s.state))(s);
  $('state-detail').textContent = s.detail || (s.code ? 'last close ' + s.code : '');
  $('fact-transport').textContent = s.transport || '–';
  $('fact-shared').textContent = { worker: 'shares a SharedWorker', leader: 'leader tab (holds the connection)',
    follower: 'follower tab (relayed)', none: 'own connection' }[s.shared] || '–';
  showPosition(s);
  const on = s.state !== 'stopped' && s.state !== 'idle';
  $('disconnect').disabled = !on;
}

// The position this tab is at: the epoch (the stream seq counts in; it
// changes when another edge had to take the stream over) and the last seq.
function showPosition(s) {
  const p = demo.client || s || {};
  $('fact-epoch').textContent = p.epoch || '–';
  $('fact-epoch').title = p.epoch || '';
  $('fact-seq').textContent = String(p.lastSeq || 0);
}

function row(cls, seq, text, epoch) {
  const list = $('messages');
  list.querySelector('.empty')?.remove();
  const li = document.createElement('li');
  li.className = cls;
  const cell = (c, t) => {
    const s = document.createElement('span');
    s.className = c;
    s.textContent = t;
    li.append(s);
  };
  cell('seq', seq);
  if (epoch) {
    // The stream the seq counts in: seq starts again at 1 in a new epoch.
    const e = document.createElement('small');
    e.className = 'epoch';
    e.textContent = epoch;
    e.title = 'epoch ' + epoch;
    li.lastElementChild.append(e);
  }
  cell('time', new Date().toLocaleTimeString());
  cell('data', text);
  list.prepend(li);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

function onMessage(m) {
  const text = typeof m.data === 'string' ? m.data : JSON.stringify(m.data);
  row(m.broadcast ? 'broadcast' : '', m.broadcast ? 'all' : '#' + m.seq, text, m.broadcast ? undefined : m.epoch);
  const at = performance.now();
  // wall: the system clock (performance.timeOrigin can drift from it by
  // hundreds of ms in Chromium), to compare with a stamp from another process.
  demo.messages.push({ seq: m.seq, epoch: m.epoch, data: m.data, broadcast: !!m.broadcast, at, wall: Date.now() });
  $('count').textContent = String(demo.messages.length);
  showPosition(null);
}

async function start(uid) {
  stop();
  demo.messages.length = 0;
  demo.states.length = 0;
  demo.gaps.length = 0;
  $('messages').replaceChildren(emptyHint.cloneNode(true));
  $('count').textContent = '0';
  $('fact-epoch').textContent = '–';
  $('fact-seq').textContent = '0';
  $('fact-uid').textContent = uid;
  $('uid').value = uid;
  if (!$('pub-user').value) $('pub-user').value = uid;
  const cfg = await config();
  const given = params.get('token');
  const getToken = async () => (await postJSON('/token', { uid })).token;
  const opts = { uid, share: params.get('share') || 'auto' };
  if (given) opts.token = given;
  else opts.getToken = getToken;
  const hb = Number(params.get('heartbeat'));
  if (hb > 0) opts.heartbeatTimeout = hb;
  const c = connect(cfg.ws_url, opts);
  demo.client = c;
  c.on('state', (s) => {
    demo.states.push({ ...s, at: performance.now() });
    showState(s);
  });
  c.on('message', onMessage);
  c.on('gap', (g) => {
    demo.gaps.push(g);
    row('gap', 'gap', g.to == null
      ? 'messages from ' + g.from + ' on may be lost (their edge went down)'
      : 'messages ' + g.from + '–' + g.to + ' could not be replayed', g.epoch);
    showPosition(null);
  });
  history.replaceState(null, '', '?' + new URLSearchParams({ ...Object.fromEntries(params), uid }));
}

function stop() {
  if (demo.client) demo.client.close();
}

// publish is also what the tests call, to time publish → visible in one clock.
demo.publish = (user, data) => postJSON('/publish', { user, data });

$('connect-form').addEventListener('submit', (e) => {
  e.preventDefault();
  start($('uid').value.trim());
});
$('disconnect').addEventListener('click', stop);
$('quick').addEventListener('click', (e) => {
  const uid = e.target.dataset && e.target.dataset.uid;
  if (uid) start(uid);
});
$('publish-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('pub-result');
  const raw = $('pub-data').value;
  let data;
  try { data = JSON.parse(raw); } catch { data = raw; }
  try {
    const r = await demo.publish($('pub-user').value.trim(), data);
    out.className = 'result';
    out.textContent = r.outcome.toLowerCase() + (r.seq ? ' as seq ' + r.seq : '') + (r.edge ? ' on edge ' + r.edge : '');
  } catch (err) {
    out.className = 'result bad';
    out.textContent = err.message;
  }
});

if (params.get('uid')) start(params.get('uid'));
