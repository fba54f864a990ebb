// The console in a real browser (Debian's Chromium, driven by Playwright)
// against a real platform. Run by crates/iot-testkit/tests/console.rs,
// which starts the platform, creates the devices and readings named in
// the environment, and publishes over MQTT when this script prints
// PUBLISH (answering PUBLISHED on stdin); the fourth device is on the
// broker, answering commands and reporting the desired state it gets.
// Exits non-zero on any failure.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env('CONSOLE_URL'); // http://127.0.0.1:port/console/
const KEY_A = env('CONSOLE_KEY_A');
const KEY_B = env('CONSOLE_KEY_B');
const JWT_A = env('CONSOLE_JWT_A');
const DEVICES_A = JSON.parse(env('CONSOLE_DEVICES_A')); // [{id, device_id}], first: thresholds and readings; fourth: answers commands
const DEVICE_B = JSON.parse(env('CONSOLE_DEVICE_B')); // {id, device_id}
const SHOTS = env('CONSOLE_SCREENSHOTS');
const CHROMIUM = process.env.CONSOLE_CHROMIUM || '/usr/bin/chromium';
const origin = new URL(BASE).origin;
mkdirSync(SHOTS, { recursive: true });

const lines = createInterface({ input: process.stdin });
const inbox = [];
let waiting = null;
lines.on('line', (l) => (waiting ? (waiting(l), (waiting = null)) : inbox.push(l)));
const nextLine = () => (inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => (waiting = r)));

async function api(key, query, variables = {}) {
  const res = await fetch(`${origin}/graphql`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Api-Key': key },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

const step = (s) => console.log(`step: ${s}`);
const [boiler] = DEVICES_A;

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const foreign = [];
page.on('request', (r) => {
  const u = new URL(r.url());
  if (u.protocol !== 'data:' && u.origin !== origin && u.origin !== origin.replace('http', 'ws')) foreign.push(r.url());
});
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.setDefaultTimeout(15000);

try {
  step('a wrong key is refused, visibly');
  await page.goto(BASE);
  await page.keyboard.type('not-a-key');
  await page.keyboard.press('Enter');
  await page.locator('.errors').filter({ hasText: 'unknown API key' }).waitFor();

  step('sign in by keyboard; the fleet shows the test devices');
  await page.locator('input[name=secret]').fill('');
  await page.locator('input[name=secret]').focus();
  await page.keyboard.type(KEY_A);
  await page.keyboard.press('Enter');
  for (const d of DEVICES_A) await page.locator(`tr[data-device="${d.device_id}"]`).waitFor();
  assert.equal(await page.locator(`tr[data-device="${DEVICE_B.device_id}"]`).count(), 0);
  const total = await page.locator('[data-count=total] .n').textContent();
  assert.equal(Number(total), DEVICES_A.length, 'deviceStatusSummary counts owner A\'s devices');
  await page.screenshot({ path: `${SHOTS}/fleet.png`, fullPage: true });

  step('by keyboard: the skip link leads to the page, Tab to the search, which narrows the table');
  const hash = await page.evaluate(() => location.hash);
  await page.locator('.skip').focus();
  await page.keyboard.press('Enter');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'main');
  assert.equal(await page.evaluate(() => location.hash), hash);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('name')), 'search');
  await page.keyboard.type(DEVICES_A[1].device_id);
  assert.equal(await page.locator('tbody tr[data-device]').count(), 1);
  await page.locator('input[name=search]').fill('');

  step('the chart plots what sensorMetrics returns for the same range');
  await page.locator(`tr[data-device="${boiler.device_id}"] a`).click();
  await page.locator('[data-testid=charts][data-loaded=true]').waitFor();
  const charts = page.locator('[data-testid=charts]');
  const [start, end, granularity] = await Promise.all(['start', 'end', 'granularity'].map((k) => charts.getAttribute(`data-${k}`)));
  assert.equal(granularity, '1m');
  const plotted = JSON.parse(await page.locator('figure.chart[data-sensor=temperature]').getAttribute('data-points'));
  const { sensorMetrics } = await api(KEY_A, `query($d: ID!, $s: String!, $e: String!, $g: String!) {
    sensorMetrics(deviceId: $d, sensorName: "temperature", startTime: $s, endTime: $e, granularity: $g) { time min_value avg_value max_value } }`,
  { d: boiler.id, s: start, e: end, g: granularity });
  assert.ok(plotted.length >= 10, `the chart has the test's readings: ${plotted.length} points`);
  assert.deepEqual(plotted, sensorMetrics.map((m) => [m.time, m.min_value, m.avg_value, m.max_value]));
  console.log(`chart: ${plotted.length} points equal sensorMetrics(${start} .. ${end}, ${granularity})`);
  await page.locator('.u-over').first().waitFor();
  await page.screenshot({ path: `${SHOTS}/device.png`, fullPage: true });

  step('the 24 h range uses 15 m buckets and still matches');
  await page.locator('button[data-range="24 h"]').click();
  await page.locator('[data-testid=charts][data-loaded=true][data-granularity="15m"]').waitFor();

  step('a second tab watches the fleet (sessionStorage is per tab: it signs in too)');
  const fleetTab = await context.newPage();
  fleetTab.setDefaultTimeout(15000);
  fleetTab.on('pageerror', (e) => pageErrors.push(e.message));
  await fleetTab.goto(BASE);
  await fleetTab.locator('input[name=secret]').fill(KEY_A);
  await fleetTab.keyboard.press('Enter');
  // The fan has never been heard from (the boiler has: its readings).
  const fanRow = fleetTab.locator(`tr[data-device="${DEVICES_A[1].device_id}"]`);
  await fanRow.locator('.online', { hasText: 'offline' }).waitFor();
  await fleetTab.locator('.socket-connected').waitFor();

  step("a third tab shows the boiler's chart, to be extended live");
  const deviceTab = await context.newPage();
  deviceTab.setDefaultTimeout(15000);
  deviceTab.on('pageerror', (e) => pageErrors.push(e.message));
  await deviceTab.goto(`${BASE}#/device/${boiler.id}`);
  await deviceTab.locator('input[name=secret]').fill(KEY_A);
  await deviceTab.keyboard.press('Enter');
  const liveChart = deviceTab.locator('figure.chart[data-sensor=temperature]');
  await deviceTab.locator('[data-testid=charts][data-loaded=true]').waitFor();
  await deviceTab.locator('.socket-connected').waitFor();
  const before = JSON.parse(await liveChart.getAttribute('data-points'));
  assert.ok(!before.some((p) => p[3] === 35.5));

  step('a reading over the threshold shows as an alert within 2 s, without reload');
  await page.goto(`${BASE}#/alerts`);
  await page.locator('[data-testid=alerts]').waitFor();
  await page.locator('.socket-connected').waitFor();
  // The subscription is sent right after the socket is acknowledged.
  await page.waitForTimeout(500);
  const navigations = [];
  page.on('framenavigated', (f) => f === page.mainFrame() && navigations.push(f.url()));
  const asked = Date.now();
  console.log('PUBLISH');
  assert.equal(await nextLine(), 'PUBLISHED');
  const row = page.locator(`tr[data-device="${boiler.device_id}"][data-state=open]`);
  await row.waitFor({ timeout: 2000 - (Date.now() - asked) });
  const seenMs = Date.now() - asked;
  console.log(`alert shown ${seenMs} ms after the publish was asked for`);
  assert.ok(seenMs <= 2000);
  assert.deepEqual(navigations.filter((u) => !u.includes('#/alerts')), [], 'no reload');
  const alertId = await row.getAttribute('data-alert');
  await page.waitForFunction(() => !document.querySelector('tr.flash'));
  await page.screenshot({ path: `${SHOTS}/alerts.png`, fullPage: true });

  step('the fleet tab shows the fan online, without reload');
  // The heartbeat takes seconds to show (3–5 s measured), not milliseconds.
  await fanRow.locator('.online', { hasText: 'online' }).waitFor({ timeout: 15000 });
  console.log(`fleet shows the fan online ${Date.now() - asked} ms after the publish was asked for`);
  await fleetTab.close();

  step('the chart took the new reading from the metrics subscription, without reload');
  await deviceTab.waitForFunction(
    (n) => JSON.parse(document.querySelector('figure.chart[data-sensor=temperature]').dataset.points).some((p) => p[3] === 35.5) ? n : false,
    before.length,
  );
  const after = JSON.parse(await liveChart.getAttribute('data-points'));
  assert.equal(after.length, before.length + 1, 'one new bucket');
  assert.deepEqual(after.slice(0, before.length), before, 'the earlier buckets stay');
  console.log(`chart extended live: ${before.length} -> ${after.length} points`);
  await deviceTab.close();

  step('acknowledging in the page changes the alert in the API');
  await row.locator('button[data-action=acknowledge]').focus();
  await page.keyboard.press('Enter');
  await page.locator(`tr[data-alert="${alertId}"][data-state=acknowledged]`).waitFor();
  const { alerts } = await api(KEY_A, `query($d: ID) { alerts(deviceId: $d) { id state acknowledged } }`, { d: boiler.id });
  const acked = alerts.find((a) => a.id === alertId);
  assert.equal(acked?.state, 'acknowledged');
  console.log(`ALERT ${alertId}`);

  step('a rule the API refuses shows its error at the field');
  await page.goto(`${BASE}#/rules`);
  await page.getByRole('button', { name: 'New rule' }).click();
  await page.locator('[data-testid=rule-form] input[name=name]').fill('too_hot');
  await page.locator('[data-testid=rule-form] textarea[name=condition]').fill('value >>> 3');
  await page.getByRole('button', { name: 'Create rule' }).click();
  const conditionError = page.locator('[data-testid=rule-form] textarea[name=condition] ~ .field-error');
  await conditionError.filter({ hasText: /./ }).waitFor();
  console.log(`rule condition error: ${await conditionError.textContent()}`);
  await page.locator('[data-testid=rule-form] textarea[name=condition]').fill('sensor_name == "temperature" AND value > 100');
  await page.getByRole('button', { name: 'Create rule' }).click();
  await page.locator('tr[data-rule=too_hot]').waitFor();

  step("a webhook edited in its row: the API's error at the field, then saved");
  await page.locator('form[aria-label="New webhook"] input[name=url]').fill('https://hooks.example/console');
  await page.getByRole('button', { name: 'Add webhook' }).click();
  const hookRow = page.locator('[data-testid=webhooks] tr[data-webhook]', { hasText: 'https://hooks.example/console' });
  await hookRow.waitFor();
  const hookId = await hookRow.getAttribute('data-webhook');
  await hookRow.getByRole('button', { name: 'Edit' }).click();
  const hookForm = page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"] [data-testid=webhook-form]`);
  // A URL the browser takes and the API refuses (http and https only).
  await hookForm.locator('input[name=url]').fill('ftp://hooks.example/console');
  await hookForm.getByRole('button', { name: 'Save webhook' }).click();
  const hookUrlError = hookForm.locator('input[name=url] ~ .field-error');
  await hookUrlError.filter({ hasText: 'not an http(s) URL' }).waitFor();
  console.log(`webhook url error: ${await hookUrlError.textContent()}`);
  await page.screenshot({ path: `${SHOTS}/webhook-edit.png`, fullPage: true });
  const { alertWebhooks: unchanged } = await api(KEY_A, '{ alertWebhooks { id url } }');
  assert.deepEqual(unchanged.filter((w) => w.id === hookId), [{ id: hookId, url: 'https://hooks.example/console' }], 'the refused edit changed nothing');
  await hookForm.locator('input[name=url]').fill('https://hooks.example/moved');
  await hookForm.locator('select[name=minSeverity]').selectOption('critical');
  await hookForm.getByRole('button', { name: 'Save webhook' }).click();
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"]`, { hasText: 'https://hooks.example/moved' }).waitFor();
  assert.equal(await page.locator('[data-testid=webhook-form]').count(), 0, 'the row is a row again');
  const { alertWebhooks: saved } = await api(KEY_A, '{ alertWebhooks { id url min_severity secret } }');
  assert.deepEqual(saved.filter((w) => w.id === hookId), [{ id: hookId, url: 'https://hooks.example/moved', min_severity: 'critical', secret: null }]);

  step('by keyboard only (Tab, typing, Enter): a rule is created and listed');
  await page.goto(`${BASE}#/fleet`);
  await page.goto(`${BASE}#/rules`);
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"]`).waitFor();
  const focused = () => page.evaluate(() => {
    const e = document.activeElement;
    return e ? `${e.tagName.toLowerCase()}${e.getAttribute('name') ? `[name=${e.getAttribute('name')}]` : ''}:${e.tagName === 'BUTTON' ? e.textContent : ''}` : '';
  });
  // The page's heading has the focus; the next stop is "New rule".
  assert.equal(await page.evaluate(() => document.activeElement?.tagName), 'H1');
  await page.keyboard.press('Tab');
  assert.equal(await focused(), 'button:New rule');
  await page.keyboard.press('Enter');
  assert.equal(await focused(), 'input[name=name]:');
  await page.keyboard.type('kbd_humid');
  const typed = {
    condition: 'sensor_name == "humidity" AND value > 99', clearCondition: '', severity: null, message: 'typed, not clicked',
    forSecs: null, deviceType: '', enabled: null,
  };
  for (const [name, text] of Object.entries(typed)) {
    await page.keyboard.press('Tab');
    assert.match(await focused(), new RegExp(`\\[name=${name}\\]`), `Tab reaches ${name}`);
    if (text) await page.keyboard.type(text);
  }
  await page.keyboard.press('Tab');
  assert.equal(await focused(), 'button:Create rule');
  await page.keyboard.press('Enter');
  await page.locator('tr[data-rule=kbd_humid]', { hasText: 'humidity' }).waitFor();
  assert.equal(await page.locator('[data-testid=rule-form]').count(), 0, 'the form is closed');
  assert.equal(await page.evaluate(() => document.activeElement?.closest('tr')?.dataset.rule), 'kbd_humid', "the focus is on the new rule's row");
  await page.getByRole('status').filter({ hasText: 'Rule kbd_humid created.' }).waitFor();
  const { alertRules } = await api(KEY_A, '{ alertRules { name condition severity message for_secs enabled } }');
  assert.deepEqual(alertRules.filter((r) => r.name === 'kbd_humid'),
    [{ name: 'kbd_humid', condition: typed.condition, severity: 'warning', message: typed.message, for_secs: 0, enabled: true }]);
  await page.screenshot({ path: `${SHOTS}/rules.png`, fullPage: true });

  step("editing a device's config and thresholds changes them in the API");
  const pump = DEVICES_A[2];
  await page.goto(`${BASE}#/device/${pump.id}`);
  await page.locator('input[name=readInterval]').fill('30');
  await page.locator('textarea[name=alertThreshold]').fill('{"temperature": {"min": 5}}');
  await page.locator('textarea[name=customFields]').fill('not json');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.locator('textarea[name=customFields] ~ .field-error', { hasText: 'not JSON' }).waitFor();
  await page.locator('textarea[name=customFields]').fill('{"floor": 2}');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.getByRole('status').filter({ hasText: 'Saved.' }).waitFor();
  const { device: edited } = await api(KEY_A, `query($id: ID!) { device(id: $id) { config { read_interval alert_threshold custom_fields } } }`, { id: pump.id });
  assert.deepEqual(edited.config, { read_interval: 30, alert_threshold: { temperature: { min: 5 } }, custom_fields: { floor: 2 } });

  step('rotating the credentials shows the new password once');
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Rotate MQTT password' }).click();
  const password = await page.locator('[data-testid=new-password] .password').textContent();
  assert.ok(password && password.length >= 16, `a password: ${password}`);
  console.log(`PASSWORD ${password}`);
  await page.getByRole('button', { name: 'Done, hide it' }).click();
  assert.equal(await page.locator('[data-testid=new-password]').count(), 0);

  step('a command sent from the device page goes live to succeeded, with the device\'s answer');
  const valve = DEVICES_A[3];
  await page.goto(`${BASE}#/device/${valve.id}`);
  const commandForm = page.locator('[data-testid=command-form]');
  await page.locator('[data-testid=commands] td.empty', { hasText: 'No commands yet.' }).waitFor();
  await page.locator('.socket-connected').waitFor();
  // By keyboard: a JSON mistake shows at its field, Enter sends.
  await commandForm.locator('input[name=name]').focus();
  await page.keyboard.type('open-valve');
  await page.keyboard.press('Tab');
  await page.keyboard.type('{"position": 40');
  await page.keyboard.press('Control+Enter');
  await commandForm.locator('textarea[name=payload] ~ .field-error', { hasText: 'not JSON' }).waitFor();
  assert.equal(await page.locator('[data-testid=commands] tr[data-command]').count(), 0, 'nothing was sent');
  await page.keyboard.type('}');
  const sentAt = Date.now();
  await page.keyboard.press('Control+Enter');
  const done = page.locator('[data-testid=commands] tr[data-command][data-status=succeeded]');
  await done.waitFor();
  console.log(`command shown succeeded ${Date.now() - sentAt} ms after sending`);
  await page.getByRole('status').filter({ hasText: 'open-valve: succeeded' }).waitFor();
  const commandId = await done.getAttribute('data-command');
  const shownResult = JSON.parse(await done.locator('code.answer').textContent());
  assert.deepEqual(shownResult, { done: 'open-valve', payload: { position: 40 } });
  const { command } = await api(KEY_A, 'query($id: ID!) { command(id: $id) { status result sent_at finished_at } }', { id: commandId });
  assert.equal(command.status, 'succeeded');
  assert.deepEqual(command.result, shownResult);
  assert.ok(command.sent_at && command.finished_at, JSON.stringify(command));
  console.log(`COMMAND ${commandId}`);

  step('a command the device fails shows failed, with its answer');
  await commandForm.locator('input[name=name]').fill('fail');
  await commandForm.locator('textarea[name=payload]').fill('');
  await commandForm.locator('input[name=name]').press('Enter');
  const failed = page.locator('[data-testid=commands] tr[data-command][data-status=failed]');
  await failed.waitFor();
  assert.deepEqual(JSON.parse(await failed.locator('code.answer').textContent()), { reason: 'asked to fail' });
  assert.equal(await page.locator('[data-testid=commands] tr[data-command]').count(), 2);
  assert.equal(await page.locator('[data-testid=commands] tr[data-command]').first().getAttribute('data-command'), await failed.getAttribute('data-command'), 'newest first');

  step('setting the desired state shows its version, then the device\'s report');
  const desiredForm = page.locator('[data-testid=desired-form]');
  const desiredText = desiredForm.locator('textarea[name=desired]');
  const baseVersion = desiredForm.locator('input[name=expectedVersion]');
  await page.locator('[data-testid=desired][data-version="0"]').waitFor();
  assert.equal(await baseVersion.inputValue(), '0');
  await desiredText.fill('{"position": 40, "mode": "eco"}');
  await desiredForm.getByRole('button', { name: 'Set desired state' }).click();
  await page.locator('[data-testid=desired][data-version="1"]').waitFor();
  await desiredForm.getByRole('status').filter({ hasText: 'Set: version 1.' }).waitFor();
  assert.equal(await baseVersion.inputValue(), '1');
  // The device applies it and reports it; the page reads the state every 5 s.
  await page.locator('[data-testid=reported-json]', { hasText: 'eco' }).waitFor({ timeout: 20000 });
  await page.locator('[data-testid=difference]', { hasText: 'The device reports what is desired.' }).waitFor();

  step('a stale version is refused by the API, shown at its field, and the current one can be loaded');
  const { setDesiredState: behind } = await api(KEY_A, 'mutation($d: ID!, $s: JSON!) { setDesiredState(deviceId: $d, desired: $s, expectedVersion: 1) { desired_version } }',
    { d: valve.id, s: { position: 10, mode: 'eco' } });
  assert.equal(behind.desired_version, 2);
  await desiredText.fill('{"position": 60, "mode": "eco"}');
  await desiredForm.getByRole('button', { name: 'Set desired state' }).click();
  const versionError = desiredForm.locator('input[name=expectedVersion] ~ .field-error');
  await versionError.filter({ hasText: 'CONFLICT' }).waitFor();
  console.log(`stale version refused: ${await versionError.textContent()}`);
  assert.match(await versionError.textContent(), /version 2/);
  const { deviceState: kept } = await api(KEY_A, 'query($d: ID!) { deviceState(deviceId: $d) { desired desired_version } }', { d: valve.id });
  assert.deepEqual(kept, { desired: { position: 10, mode: 'eco' }, desired_version: 2 }, 'the refused write changed nothing');
  await page.locator('[data-testid=desired][data-version="2"]').waitFor();
  await desiredForm.getByRole('button', { name: 'Load version 2' }).click();
  assert.equal(await baseVersion.inputValue(), '2');
  assert.equal(await versionError.textContent(), '');
  await desiredText.fill('{"position": 60, "mode": "eco"}');
  await desiredText.press('Control+Enter');
  await page.locator('[data-testid=desired][data-version="3"]').waitFor();
  await page.locator('[data-testid=reported-json]', { hasText: '60' }).waitFor({ timeout: 20000 });
  await page.locator('[data-testid=difference]', { hasText: 'The device reports what is desired.' }).waitFor();
  console.log('STATE 3');
  await page.screenshot({ path: `${SHOTS}/device-commands.png`, fullPage: true });

  step('the query page runs a query');
  await page.goto(`${BASE}#/query`);
  await page.getByRole('button', { name: /^Run/ }).click();
  await page.locator('[data-testid=result]').filter({ hasText: 'total_devices' }).waitFor();
  await page.screenshot({ path: `${SHOTS}/query.png`, fullPage: true });

  step('390 px: no horizontal scroll on any page');
  await page.setViewportSize({ width: 390, height: 844 });
  // The page does not scroll sideways, and nothing sticks out of it
  // (cut off) but inside a container that scrolls sideways itself.
  const noSideScroll = async (what) => {
    const { sw, cw, out } = await page.evaluate(() => {
      const cw = document.documentElement.clientWidth;
      const inScroller = (e) => {
        for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
          if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) return true;
        }
        return false;
      };
      const out = [...document.body.querySelectorAll('*')]
        .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 1 && r.right > cw + 0.5 && !inScroller(e); })
        .map((e) => `${e.outerHTML.slice(0, 100)} (right ${Math.round(e.getBoundingClientRect().right)})`);
      return { sw: document.documentElement.scrollWidth, cw, out };
    });
    assert.ok(sw <= cw, `${what} at 390 px is ${sw} px wide (viewport ${cw})`);
    assert.deepEqual(out.slice(0, 5), [], `${what} at 390 px: elements past the right edge`);
  };
  await page.goto(`${BASE}#/fleet`);
  await page.locator(`tr[data-device="${boiler.device_id}"]`).waitFor();
  await noSideScroll('the fleet page');
  await page.screenshot({ path: `${SHOTS}/fleet-390.png`, fullPage: true });
  await page.goto(`${BASE}#/device/${boiler.id}`);
  await page.locator('[data-testid=charts][data-loaded=true]').waitFor();
  await page.locator(`tr[data-alert="${alertId}"]`).waitFor();
  await page.waitForTimeout(300);
  await noSideScroll('the device page');
  await page.screenshot({ path: `${SHOTS}/device-390.png`, fullPage: true });
  await page.goto(`${BASE}#/device/${valve.id}`);
  await page.locator('[data-testid=commands] tr[data-command]').first().waitFor();
  await page.locator('[data-testid=desired][data-version="3"]').waitFor();
  await noSideScroll('the device page with commands and state');
  await page.screenshot({ path: `${SHOTS}/device-commands-390.png`, fullPage: true });
  await page.goto(`${BASE}#/alerts`);
  await page.locator(`[data-testid=alerts] tr[data-alert="${alertId}"]`).waitFor();
  await noSideScroll('the alerts page');
  await page.screenshot({ path: `${SHOTS}/alerts-390.png`, fullPage: true });
  await page.goto(`${BASE}#/rules`);
  await page.locator('tr[data-rule=too_hot]').waitFor();
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"]`).waitFor();
  await noSideScroll('the rules page');
  await page.screenshot({ path: `${SHOTS}/rules-390.png`, fullPage: true });
  // A URL with no place to break wraps rather than widening the page.
  const longUrl = `https://hooks.example/${'a-very-long-path-segment-'.repeat(6)}?token=${'f'.repeat(64)}`;
  const { createAlertWebhook: longHook } = await api(KEY_A, 'mutation($u: String!) { createAlertWebhook(url: $u) { id } }', { u: longUrl });
  await page.goto(`${BASE}#/fleet`);
  await page.goto(`${BASE}#/rules`);
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${longHook.id}"]`).waitFor();
  await noSideScroll('the rules page with a long webhook URL');
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${longHook.id}"]`).getByRole('button', { name: 'Edit' }).click();
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${longHook.id}"] [data-testid=webhook-form]`).waitFor();
  await noSideScroll("the rules page with a long webhook URL's form open");
  await api(KEY_A, 'mutation($id: ID!) { deleteAlertWebhook(id: $id) }', { id: longHook.id });
  await page.goto(`${BASE}#/fleet`);
  await page.goto(`${BASE}#/rules`);
  await page.locator('tr[data-rule=too_hot]').waitFor();
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"]`).waitFor();
  await page.locator('tr[data-rule=too_hot]').getByRole('button', { name: 'Edit' }).click();
  await page.locator('[data-testid=rule-form][aria-label="Edit rule too_hot"]').waitFor();
  await noSideScroll("the rules page with a rule's form open");
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"]`).getByRole('button', { name: 'Edit' }).click();
  await page.locator(`[data-testid=webhooks] tr[data-webhook="${hookId}"] [data-testid=webhook-form]`).waitFor();
  await noSideScroll("the rules page with a rule's and a webhook's form open");
  await page.screenshot({ path: `${SHOTS}/rules-edit-390.png`, fullPage: true });
  await page.goto(`${BASE}#/query`);
  await page.getByRole('button', { name: /^Run/ }).click();
  await page.locator('[data-testid=result]').filter({ hasText: 'total_devices' }).waitFor();
  await noSideScroll('the query page');
  await page.screenshot({ path: `${SHOTS}/query-390.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });

  step("a second owner's key sees none of the first owner's devices or alerts");
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('input[name=secret]').fill(KEY_B);
  await page.keyboard.press('Enter');
  await page.locator(`tr[data-device="${DEVICE_B.device_id}"]`).waitFor();
  for (const d of DEVICES_A) assert.equal(await page.locator(`tr[data-device="${d.device_id}"]`).count(), 0);
  await page.screenshot({ path: `${SHOTS}/fleet-owner-b.png`, fullPage: true });
  await page.goto(`${BASE}#/alerts`);
  await page.locator('[data-testid=alerts] td.empty').waitFor();
  assert.equal(await page.locator(`tr[data-alert="${alertId}"]`).count(), 0);
  await page.goto(`${BASE}#/device/${boiler.id}`);
  await page.getByRole('heading', { name: 'No such device' }).waitFor();

  step('a JWT signs in too');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('select[name=kind]').selectOption('jwt');
  await page.locator('input[name=secret]').fill(JWT_A);
  await page.keyboard.press('Enter');
  await page.locator(`tr[data-device="${boiler.device_id}"]`).waitFor();

  step('alert-engine down: the pages say so, and show the rest');
  console.log('STOP_ALERTS');
  assert.equal(await nextLine(), 'STOPPED');
  await page.goto(`${BASE}#/alerts`);
  const down = page.locator('.errors li[data-code=BACKEND_UNAVAILABLE]').first();
  await down.waitFor();
  console.log(`alerts page with alert-engine down: ${await down.textContent()}`);
  await page.goto(`${BASE}#/device/${boiler.id}`);
  await page.locator('[data-testid=charts][data-loaded=true]').waitFor();
  await page.locator('.errors li[data-code=BACKEND_UNAVAILABLE]').first().waitFor();
  assert.equal(await page.getByRole('heading', { name: 'boiler' }).count(), 1);
  await page.screenshot({ path: `${SHOTS}/backend-down.png`, fullPage: true });

  step('nothing came from anywhere but the gateway');
  assert.deepEqual(foreign, []);
  assert.deepEqual(pageErrors, []);
  console.log('console browser checks passed');
} catch (e) {
  for (const [i, p] of context.pages().entries()) {
    await p.screenshot({ path: `${SHOTS}/failure-${i}.png`, fullPage: true }).catch(() => {});
  }
  console.error(`FAILED at ${page.url()}: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
