import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, Close, tokenExpiry } from '../push.js';
import { fakeEnv, token, flush } from '../testing/fakes.js';

const URL_WS = 'ws://push.example:8080/ws';

// Sessions here have no heartbeat watchdog (the fake edge sends none) and
// start on a whole second, so a token's exp is exactly its ttl away.
function aligned() {
  const env = fakeEnv();
  env.wall = Math.floor(env.wall / 1000) * 1000;
  return env;
}

function session(env, opts = {}) {
  const s = new Session(URL_WS, { uid: 'alice', env, heartbeatTimeout: 0, ...opts });
  const got = { messages: [], states: [] };
  s.on('message', (m) => got.messages.push(m));
  s.on('state', (st) => got.states.push(st));
  s.start();
  return { s, got, last: () => got.states[got.states.length - 1] };
}

test('tokenExpiry: exp in ms, undefined without one', () => {
  const now = 1_800_000_000_000;
  assert.equal(tokenExpiry(token('a', 120, now)), now + 120000);
  assert.equal(tokenExpiry('abc'), undefined);
  assert.equal(tokenExpiry(undefined), undefined);
});

test('renews the token over the open WebSocket ahead of expiry; the edge\'s answer makes it the one to resume with', async () => {
  const env = aligned();
  const tokens = [];
  const getToken = async () => {
    const t = token('alice', 3600, env.now()) + tokens.length; // distinct tokens
    tokens.push(t);
    return t;
  };
  const first = token('alice', 120, env.wall);
  const { s, got, last } = session(env, { token: first, getToken });
  const ws = env.sockets[0];
  ws.open();
  await flush();
  // 120 s left: renewed 60 s (refreshAhead) before exp.
  await env.advance(59000);
  assert.equal(ws.sent.length, 0);
  await env.advance(1000);
  await flush();
  assert.equal(tokens.length, 1);
  assert.deepEqual(ws.sent.map((t) => JSON.parse(t)), [{ type: 'token', token: tokens[0] }]);
  assert.equal(s.token, first, 'not the Session\'s token until the edge took it');
  ws.send({ seq: 0, token: true, exp: Math.floor(tokenExpiry(tokens[0]) / 1000) });
  assert.equal(s.token, tokens[0]);
  assert.equal(got.messages.length, 0, 'the answer is not a message');
  // Past the first token's exp nothing happens: still open, same socket.
  await env.advance(120000);
  assert.equal(last().state, 'open');
  assert.equal(env.sockets.length, 1);
  // A reconnect uses the renewed token.
  ws.drop(1006);
  await env.advance(60000);
  assert.equal(env.sockets[1].url.searchParams.get('token'), tokens[0]);
});

test('a short token is renewed at half its life', async () => {
  const env = aligned();
  let calls = 0;
  session(env, { token: token('alice', 20, env.wall), getToken: async () => { calls++; return token('alice', 3600, env.now()); } });
  env.sockets[0].open();
  await env.advance(9999);
  assert.equal(calls, 0);
  await env.advance(1);
  await flush();
  assert.equal(calls, 1);
  assert.equal(env.sockets[0].sent.length, 1);
});

test('a failed renewal is retried while the token lasts; at expiry the edge\'s 4001 brings a new connection', async () => {
  const env = aligned();
  let fail = true;
  let calls = 0;
  const getToken = async () => {
    calls++;
    if (fail) throw new Error('token service down');
    return token('alice', 3600, env.now());
  };
  session(env, { token: token('alice', 120, env.wall), getToken, refreshRetry: 5000 });
  const ws = env.sockets[0];
  ws.open();
  await env.advance(60000);
  await flush();
  assert.equal(calls, 1);
  await env.advance(5000);
  await flush();
  assert.equal(calls, 2);
  assert.equal(ws.sent.length, 0);
  fail = false;
  ws.drop(Close.unauthorized); // the edge closed it at expiry
  await flush();
  await env.advance(0);
  assert.equal(env.sockets.length, 2);
  assert.equal(calls, 3);
});

test('no getToken, or SSE: no renewal; SSE renews by reconnecting after its 4001 close event', async () => {
  const env = aligned();
  session(env, { token: token('alice', 120, env.wall) });
  env.sockets[0].open();
  await env.advance(200000);
  assert.equal(env.sockets[0].sent.length, 0);

  const env2 = aligned();
  let calls = 0;
  session(env2, { token: token('alice', 120, env2.wall), transports: ['sse'], getToken: async () => { calls++; return token('alice', 3600, env2.now()); } });
  const es = env2.sources[0];
  es.open();
  await env2.advance(100000);
  assert.equal(calls, 0);
  es.event('close', { close: 4001, reason: 'token expired' });
  await flush();
  await env2.advance(0);
  assert.equal(calls, 1);
  assert.equal(env2.sources.length, 2);
  assert.equal(env2.sources[1].url.searchParams.get('last_seq'), '0');
});
