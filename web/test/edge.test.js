// push.js against a real edge: edge and pushctl are built from this tree
// into a temporary directory (PUSH_EDGE_BIN and PUSH_PUSHCTL_BIN name
// prebuilt ones instead). Skipped when there is no Go toolchain.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';
import { Session } from '../push.js';
import { NodeWebSocket } from '../testing/nodews.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
let EDGE = process.env.PUSH_EDGE_BIN;
let PUSHCTL = process.env.PUSH_PUSHCTL_BIN;
let built = null;
let skip = false;
if (!EDGE || !PUSHCTL) {
  built = mkdtempSync(join(tmpdir(), 'push-web-edge-'));
  const r = spawnSync('go', ['build', '-o', built + '/', './cmd/edge', './cmd/pushctl'], { cwd: root, encoding: 'utf8' });
  if (r.error && r.error.code === 'ENOENT') skip = 'no Go toolchain to build the edge';
  else if (r.status !== 0) throw new Error('go build ./cmd/edge ./cmd/pushctl: ' + (r.stderr || r.error));
  EDGE = join(built, 'edge');
  PUSHCTL = join(built, 'pushctl');
}

const SECRET = 'node-edge-test-secret-node-edge-test-secret';

function mint(sub, ttlSec) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64({ sub, iat: now, exp: now + ttlSec });
  return signed + '.' + crypto.createHmac('sha256', SECRET).update(signed).digest('base64url');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeout = 15000) {
  const end = Date.now() + timeout;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(20);
  }
}

let edge;
let ws;
let grpc;

before(async () => {
  if (skip) return;
  edge = spawn(EDGE, ['--listen', '127.0.0.1:0', '--grpc', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--dev'], {
    env: { PATH: process.env.PATH, PUSH_JWT_SECRET: SECRET },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  edge.stderr.on('data', (d) => {
    log += d;
    for (const line of log.split('\n')) {
      if (!line.includes('"edge up"')) continue;
      const v = JSON.parse(line);
      ws = v.ws;
      grpc = v.grpc;
    }
  });
  await until('the edge to start', () => ws && grpc, 30000);
});

after(() => {
  if (edge) edge.kill('SIGKILL');
  if (built) rmSync(built, { recursive: true, force: true });
});

function start(uid, opts) {
  const sockets = [];
  const env = {
    WebSocket: class extends NodeWebSocket {
      constructor(url) {
        super(url);
        sockets.push(this);
      }
    },
  };
  const s = new Session(`ws://${ws}/ws`, { uid, env, transports: ['websocket'], heartbeatTimeout: 0, ...opts });
  const got = { messages: [], states: [] };
  s.on('message', (m) => got.messages.push(m));
  s.on('state', (st) => got.states.push(st));
  s.start();
  return { s, got, sockets };
}

test('a renewed connection outlives its first token and still receives messages', { skip }, async () => {
  const uid = 'node-renew';
  const first = mint(uid, 3);
  const renewed = [];
  const { s, got, sockets } = start(uid, {
    token: first,
    getToken: async () => {
      const t = mint(uid, 3600);
      renewed.push(t);
      return t;
    },
  });
  try {
    await until('open', () => s.state.state === 'open');
    await until('the edge to take the renewed token', () => renewed.length > 0 && s.token === renewed[0]);
    // Past the first token's exp (whole seconds) and a wheel tick.
    await sleep(4500);
    assert.equal(s.state.state, 'open');
    assert.equal(sockets.length, 1, 'the connection was not replaced');
    const r = spawnSync(PUSHCTL, ['publish', '--grpc', grpc, '--user', uid, '--data', '{"after":"expiry"}'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    await until('the message', () => got.messages.length === 1);
    assert.deepEqual(got.messages[0].data, { after: 'expiry' });
  } finally {
    s.close();
  }
});

test('without getToken the edge closes with 4001 at expiry and the session stops unauthorized', { skip }, async () => {
  const { s, sockets } = start('node-expire', { token: mint('node-expire', 2) });
  try {
    await until('open', () => s.state.state === 'open');
    await until('the close at expiry', () => s.state.state === 'stopped');
    assert.deepEqual(sockets[0].closeEvent, { code: 4001, reason: 'token expired' });
    assert.equal(s.state.reason, 'unauthorized');
    assert.equal(s.state.detail, 'server said 4001');
  } finally {
    s.close();
  }
});
