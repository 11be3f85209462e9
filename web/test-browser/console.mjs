// The cluster console in headless Chromium, run by test/console (Go), which
// starts a real cluster (edge, router and pushctl binaries on loopback,
// users connected through the router) and passes:
//   CONSOLE_URL  the router's console, http://admin/console/
//   TOKEN        the router's --admin-token
//   SIMULATE     what `pushctl ring simulate --add ...` printed for ADD
//   ADD          the member to add, JSON {id, name, ws, grpc}
//   MOVERS       how many connected users the new ring gives to ADD
//   USERS        how many users are connected
//   SHOTS        the directory screenshots are written to
//   CHROMIUM     the browser binary
// The steps build on each other: the ring drawn, a preview of adding
// ADD, applying it, then an apply that conflicts with a change made
// meanwhile.
// It prints "PASS name detail" or "FAIL name detail" per step and
// "SHOT path" per screenshot; it exits 1 if a step failed.
import { chromium } from 'playwright-core';
import { join } from 'node:path';

const URL = process.env.CONSOLE_URL;
const ADD = JSON.parse(process.env.ADD);
const MOVERS = Number(process.env.MOVERS);
const SIM = process.env.SIMULATE;
const log = (...a) => console.error(...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeout = 60000) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      if ((last = await fn())) return last;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error('timed out waiting for ' + what + (last instanceof Error ? ': ' + last.message : ''));
}

function expect(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

// parseSimulate reads pushctl's output: the moved and ideal lines and the
// table (ID NAME STATE WEIGHT BEFORE AFTER [CHANGE]).
function parseSimulate(text) {
  const moved = text.match(/^moved\s+(\S+) \((\d+) of (\d+) keys uid-0\.\.uid-(\d+)\)$/m);
  const ideal = text.match(/^ideal\s+(\S+)$/m);
  if (!moved || !ideal) throw new Error('unexpected pushctl output:\n' + text);
  const rows = {};
  let inTable = false;
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'ID') { inTable = true; continue; }
    if (!inTable || f.length < 6) continue;
    rows[f[0]] = { name: f[1], state: f[2], weight: f[3], before: f[4], after: f[5], change: f.slice(6).join(' ') };
  }
  return { moved: moved[1], keysLine: `(${moved[2]} of ${moved[3]} keys uid-0..uid-${moved[4]})`, ideal: ideal[1], rows };
}

const shot = async (page, name) => {
  const path = join(process.env.SHOTS, `console-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log('SHOT ' + path);
};

const sim = parseSimulate(SIM);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = 0;
const steps = [];
const step = (name, run) => steps.push([name, run]);
const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
page.on('pageerror', (e) => { log('pageerror:', e.message); failed++; });
page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log('console:', m.text()); });

// The ring as it is: three members drawn with their shares, each share
// the BEFORE column of pushctl ring simulate (the stored document's).
step('ring-drawn', async () => {
  await page.goto(URL);
  await until('three members drawn', async () => (await page.locator('#ring g.member').count()) === 3 && (await page.locator('#members tbody tr').count()) === 3);
  for (const id of ['1', '2', '3']) {
    const row = page.locator(`#members tr[data-id="${id}"]`);
    expect(`member ${id} share`, await row.locator('.share').textContent(), sim.rows[id].before);
    expect(`member ${id} label`, await page.locator(`#ring text.label[data-id="${id}"]`).textContent(), `${sim.rows[id].name} ${sim.rows[id].before}`);
    expect(`member ${id} status`, await page.locator(`#ring g.member[data-id="${id}"]`).getAttribute('data-status'), 'live');
  }
  // The users connected through the router are counted on the edges.
  await until('users counted', async () => Number(await page.locator('#fact-users').textContent()) > 0);
  // A backend publishes to them about 20 times a second: the rates show.
  await until('publishes per second', async () => Number(await page.locator('#fact-pubs').textContent()) > 0);
  await until('publishes per second per edge', async () => {
    for (const id of ['1', '2', '3']) if (!(Number(await page.locator(`#members tr[data-id="${id}"] .pubs`).textContent()) > 0)) return false;
    return true;
  });
  await until('edge 4 listed as live but not in the ring', async () => (await page.locator('#unlisted').textContent()).includes(`id ${ADD.id}`));
  await shot(page, 'ring');
  return `shares ${['1', '2', '3'].map((id) => sim.rows[id].before).join(' ')}, users ${await page.locator('#fact-users').textContent()}, publishes/s ${await page.locator('#fact-pubs').textContent()}`;
});

// A preview of adding the fourth edge shows pushctl ring simulate's
// numbers, and draws the shares after on the outer ring.
step('preview-equals-simulate', async () => {
  await page.selectOption('#op', 'add');
  await page.fill('#id', String(ADD.id));
  await page.fill('#name', ADD.name);
  await page.fill('#ws', ADD.ws);
  await page.fill('#grpc', ADD.grpc);
  await page.fill('#weight', '1');
  await page.click('#preview-btn');
  await until('the preview', () => page.locator('#preview').isVisible());
  expect('moved', await page.locator('#preview-moved').textContent(), sim.moved);
  expect('moved keys', await page.locator('#preview-moved-keys').textContent(), sim.keysLine);
  expect('ideal', await page.locator('#preview-ideal').textContent(), sim.ideal);
  const ids = Object.keys(sim.rows);
  expect('preview rows', await page.locator('#preview-table tbody tr').count(), ids.length);
  for (const id of ids) {
    const row = page.locator(`#preview-table tr[data-id="${id}"]`);
    const got = {
      name: (await row.locator('td').nth(1).textContent()).trim(),
      state: await row.locator('td').nth(2).textContent(),
      weight: await row.locator('td').nth(3).textContent(),
      before: await row.locator('.before').textContent(),
      after: await row.locator('.after').textContent(),
      change: await row.locator('.change').textContent(),
    };
    expect(`preview row ${id}`, got, sim.rows[id]);
    expect(`outer ring ${id}`, await page.locator(`#ring path.after[data-id="${id}"]`).count(), 1);
  }
  expect('pushctl text', await page.locator('#preview-text').textContent(), SIM);
  // The connected users (the edges' /metrics) and the estimate of those
  // that move, which the test's own count bounds from below.
  const users = (await page.locator('#preview-users').textContent()).match(/^(\d+) of (\d+)$/);
  if (!users || Number(users[2]) !== Number(process.env.USERS) || Number(users[1]) < 1 || Number(users[1]) > Number(users[2])) {
    throw new Error(`users moving: ${await page.locator('#preview-users').textContent()}, want N of ${process.env.USERS}`);
  }
  expect('center', await page.locator('#ring text.center.big').textContent(), sim.moved);
  await shot(page, 'preview');
  return `moved ${sim.moved} ${sim.keysLine}, ideal ${sim.ideal}, after ${ids.map((id) => sim.rows[id].after).join(' ')}`;
});

// Apply (with the admin token): the ring shows the new member, and the
// users it owns move to it (closed with 4003, reconnected through the
// router).
step('apply-moves-users', async () => {
  await page.fill('#token', process.env.TOKEN);
  await page.click('#apply-btn');
  await until('applied', async () => (await page.locator('#result').textContent()).startsWith('Applied'));
  await until('four members drawn', async () => (await page.locator('#ring g.member').count()) === 4);
  expect('new member share', await page.locator(`#members tr[data-id="${ADD.id}"] .share`).textContent(), sim.rows[String(ADD.id)].after);
  await until(`${MOVERS} users on edge ${ADD.id}`, async () =>
    Number(await page.locator(`#members tr[data-id="${ADD.id}"] .connections`).textContent()) === MOVERS);
  await until(`${MOVERS} users moved`, async () => Number(await page.locator('#result').getAttribute('data-moved')) >= MOVERS);
  const text = await page.locator('#result').textContent();
  await shot(page, 'applied');
  return text;
});

// A change previewed on a version that somebody else changed meanwhile is
// not applied (409): the page says so and asks for a new preview. The
// change made meanwhile adds a draining member, which owns nobody (no user
// moves).
step('apply-conflict', async () => {
  await page.selectOption('#op', 'weight');
  // Only the fields of the chosen change show (the hidden attribute wins
  // over the form's CSS); the router has an admin token, so its field does.
  expect('ws field shown for a weight change', await page.locator('#ws').isVisible(), false);
  expect('grpc field shown for a weight change', await page.locator('#grpc').isVisible(), false);
  expect('admin token field shown', await page.locator('#token-label').isVisible(), Boolean(process.env.TOKEN));
  await page.fill('#id', '1');
  await page.fill('#weight', '2');
  await page.click('#preview-btn');
  await until('the preview', () => page.locator('#preview').isVisible());
  const version = Number((await page.locator('#ring text.center').first().textContent()).match(/^v(\d+)/)[1]);
  const other = await fetch(new globalThis.URL('../api/v1/ring/apply', URL), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + process.env.TOKEN },
    body: JSON.stringify({ version, force: true, changes: [{ op: 'add', member: { id: 5, name: 'edge-5', ws: '127.0.0.1:1', grpc: '127.0.0.1:2', state: 'draining' } }] }),
  });
  expect('the change made meanwhile', other.status, 200);
  await page.click('#apply-btn');
  await until('the conflict shown', async () => (await page.locator('#result').textContent()).includes('(409)'));
  const text = await page.locator('#result').textContent();
  expect('conflict message', text, `Not applied (409): the ring changed meanwhile (now v${version + 1}): preview again`);
  expect('apply disabled', await page.locator('#apply-btn').isDisabled(), true);
  await until('the draining member drawn', async () => (await page.locator('#ring g.member').count()) === 5);
  expect('member 5 state', await page.locator('#members tr[data-id="5"] td').nth(2).textContent(), 'draining, no lease');
  expect('member 1 weight', await page.locator('#members tr[data-id="1"] td').nth(3).textContent(), '1');
  await shot(page, 'conflict');
  return text;
});

try {
  for (const [name, run] of steps) {
    const t0 = Date.now();
    try {
      const detail = await run();
      console.log(`PASS ${name} ${detail} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name} ${String(e && e.stack || e).split('\n').slice(0, 3).join(' | ')}`);
      await shot(page, 'failed-' + name).catch(() => {});
      break; // the steps build on each other
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
