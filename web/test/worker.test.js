// push-worker.js under Node: the SharedWorker global is faked (onconnect,
// MessagePorts), and the Session inside uses the fake WebSocket through
// globalThis, since the worker builds Sessions with the default environment.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { fakeEnv, token, flush } from '../testing/fakes.js';

const env = fakeEnv();
globalThis.self = globalThis;
globalThis.WebSocket = env.WebSocket;
await import('../push-worker.js');

// A fake MessagePort pair end: the worker's side records what it posts;
// the test's side calls send() as a tab would.
const tabs = [];
// Every tab leaves at the end, so the worker closes its Sessions (after its
// grace period) and no timer keeps the test process alive.
after(() => {
  for (const t of tabs) t.send({ type: 'unsubscribe' });
});

function tab() {
  const t = { got: [] };
  tabs.push(t);
  t.port = {
    postMessage: (m) => t.got.push(structuredClone(m)),
    start() {},
    onmessage: null,
  };
  self.onconnect({ ports: [t.port] });
  t.send = (m) => t.port.onmessage({ data: structuredClone(m) });
  t.messages = () => t.got.filter((m) => m.type === 'message').map((m) => m.v.seq);
  t.states = () => t.got.filter((m) => m.type === 'state').map((m) => m.v.state);
  return t;
}

test('two tabs share one Session and one socket; both get every message', async () => {
  const a = tab();
  const b = tab();
  a.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w1', token: token('w1') }, canRefresh: false });
  b.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w1', token: token('w1') }, canRefresh: false });
  await flush();
  const socks = env.sockets.filter((s) => s.url.searchParams.get('uid') === 'w1');
  assert.equal(socks.length, 1);
  socks[0].open();
  socks[0].send({ seq: 1, data: 1 });
  socks[0].send({ seq: 2, data: 2 });
  assert.deepEqual(a.messages(), [1, 2]);
  assert.deepEqual(b.messages(), [1, 2]);
  assert.equal(b.states().at(-1), 'open');
  // One tab leaves: the other goes on.
  a.send({ type: 'unsubscribe' });
  socks[0].send({ seq: 3, data: 3 });
  assert.deepEqual(a.messages(), [1, 2]);
  assert.deepEqual(b.messages(), [1, 2, 3]);
  assert.equal(socks[0].closedWith, null);
});

test('the token comes from a tab that can refresh it', async () => {
  const a = tab();
  a.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w2' }, canRefresh: true });
  await flush();
  const req = a.got.find((m) => m.type === 'token');
  assert.ok(req, 'the worker asked the tab for a token');
  a.send({ type: 'token', id: req.id, token: token('w2') });
  await flush();
  const socks = env.sockets.filter((s) => s.url.searchParams.get('uid') === 'w2');
  assert.equal(socks.length, 1);
  assert.equal(socks[0].url.searchParams.get('token'), token('w2'));
});

test('no tab can give a token: auth error for every tab', async () => {
  const a = tab();
  a.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w3', token: token('someone-else') }, canRefresh: false });
  await flush();
  assert.equal(a.states().at(-1), 'stopped');
  const st = a.got.filter((m) => m.type === 'state').at(-1).v;
  assert.equal(st.reason, 'unauthorized');
  assert.equal(env.sockets.filter((s) => s.url.searchParams.get('uid') === 'w3').length, 0);
});

test('a tab that subscribes with a position (a takeover, a worker restarted) resumes with its epoch; states carry it', async () => {
  const a = tab();
  a.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w4', token: token('w4'), lastSeq: 57, epoch: 'E1' }, canRefresh: false });
  await flush();
  const socks = env.sockets.filter((s) => s.url.searchParams.get('uid') === 'w4');
  assert.equal(socks.length, 1);
  assert.equal(socks[0].url.searchParams.get('last_seq'), '57');
  assert.equal(socks[0].url.searchParams.get('epoch'), 'E1');
  socks[0].open();
  socks[0].send({ seq: 57, epoch: 'E1', data: 'dup' });
  socks[0].send({ gap: true, epoch: 'E1', from: 58 });
  socks[0].send({ seq: 1, epoch: 'E2', data: 'new' });
  const got = a.got.filter((m) => m.type !== 'state').map((m) => [m.type, m.v.epoch, m.v.seq ?? m.v.from]);
  assert.deepEqual(got, [['gap', 'E1', 58], ['message', 'E2', 1]]);
  const st = a.got.filter((m) => m.type === 'state').at(-1).v;
  assert.deepEqual([st.state, st.epoch, st.lastSeq], ['open', 'E1', 57]);
  // A second tab joins the running Session: its state is the position now.
  const b = tab();
  b.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w4', token: token('w4') }, canRefresh: false });
  await flush();
  const bst = b.got.filter((m) => m.type === 'state').at(-1).v;
  assert.deepEqual([bst.state, bst.epoch, bst.lastSeq], ['open', 'E2', 1]);
});

test('a tab that opens later gets what the shared connection already has, once, before its state', async () => {
  const a = tab();
  a.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w5', token: token('w5') }, canRefresh: false });
  await flush();
  const socks = env.sockets.filter((s) => s.url.searchParams.get('uid') === 'w5');
  socks[0].open();
  socks[0].send({ seq: 1, epoch: 'E', data: 'one' });
  socks[0].send({ seq: 0, broadcast: true, data: 'all' });
  socks[0].send({ seq: 2, epoch: 'E', data: 'two' });
  const b = tab();
  b.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w5', token: token('w5') }, canRefresh: false });
  await flush();
  assert.deepEqual(b.got.map((m) => [m.type, m.v.data ?? m.v.state]), [['message', 'one'], ['message', 'all'], ['message', 'two'], ['state', 'open']]);
  socks[0].send({ seq: 3, epoch: 'E', data: 'three' });
  assert.deepEqual(b.messages(), [1, 0, 2, 3]);
  assert.deepEqual(a.messages(), [1, 0, 2, 3]);
  assert.equal(env.sockets.filter((s) => s.url.searchParams.get('uid') === 'w5').length, 1);
});

test('the replay keeps the newest 200', async () => {
  const a = tab();
  a.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w6', token: token('w6') }, canRefresh: false });
  await flush();
  const sock = env.sockets.find((s) => s.url.searchParams.get('uid') === 'w6');
  sock.open();
  for (let i = 1; i <= 250; i++) sock.send({ seq: i, epoch: 'E', data: i });
  const b = tab();
  b.send({ type: 'subscribe', url: 'ws://h/ws', opts: { uid: 'w6', token: token('w6') }, canRefresh: false });
  await flush();
  const got = b.messages();
  assert.equal(got.length, 200);
  assert.deepEqual([got[0], got.at(-1)], [51, 250]);
});
