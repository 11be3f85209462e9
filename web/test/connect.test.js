import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '../push.js';
import { fakeEnv, token, flush } from '../testing/fakes.js';

test('connect: handlers attached right after connect() see the first states, even an immediate auth error', async () => {
  const env = fakeEnv();
  const c = connect('ws://h/ws', { uid: 'alice', token: token('bob'), share: 'none', env });
  const states = [];
  c.on('state', (s) => states.push(s));
  await flush();
  assert.deepEqual(states.map((s) => [s.state, s.reason, s.shared]), [['stopped', 'unauthorized', 'none']]);
  assert.equal(env.sockets.length, 0);
});

test('connect: messages once, in order; close() stops', async () => {
  const env = fakeEnv();
  const c = connect('ws://h/ws', { uid: 'alice', token: token('alice'), share: 'none', env });
  const seqs = [];
  c.on('message', (m) => seqs.push(m.seq));
  await flush();
  const ws = env.sockets[0];
  ws.open();
  for (const s of [1, 2, 2, 3]) ws.send({ seq: s, data: s });
  assert.deepEqual(seqs, [1, 2, 3]);
  assert.equal(c.lastSeq, 3);
  assert.equal(c.state.state, 'open');
  c.close();
  assert.equal(c.state.state, 'stopped');
  assert.equal(ws.closedWith, 1000);
});

test('connect: needs a uid and a token or getToken', () => {
  assert.throws(() => connect('ws://h/ws', { token: 'x' }), /uid/);
  assert.throws(() => connect('ws://h/ws', { uid: 'a' }), /token/);
});
