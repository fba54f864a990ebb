// The device page's talking back to the device: commands sent to it and
// followed live through their lifecycle (the `commandUpdates`
// subscription), and its desired state beside the state it reports, set
// against the version it was read at (the API refuses a stale one).
import { run, mutate, subscribe, watchSocket } from '../api';
import { h, fill, fmtTime, field } from '../dom';
import { errorBox, badge, showFieldErrors, toErrors } from '../ui';

/** The fields of the CommandFields fragment. */
export type Command = {
  id: string;
  name: string;
  payload: unknown;
  status: string;
  result: unknown;
  created_at: string | null;
  deadline: string | null;
  sent_at: string | null;
  delivered_at: string | null;
  finished_at: string | null;
};

/** The fields of the StateFields fragment. */
export type DeviceState = {
  device_id: string;
  desired: unknown;
  desired_version: number;
  desired_at: string | null;
  published_version: number;
  reported: unknown;
  reported_at: string | null;
  difference: Record<string, { desired: unknown; reported: unknown }>;
};

/** How far each status is along the lifecycle: an update never moves a
 * command back (the mutation's `queued` can arrive after the
 * subscription's `sent`). */
const STAGE: Record<string, number> = { queued: 0, sent: 1, delivered: 2, succeeded: 3, failed: 3, timed_out: 3, expired: 3 };
const FINAL = new Set(['succeeded', 'failed', 'timed_out', 'expired']);
const PAGE = 10;
/** How often the state is read again: the API pushes no state changes. */
const STATE_POLL_MS = 5000;

const json = (v: unknown) => (v === null || v === undefined ? '—' : JSON.stringify(v, null, 2));
const jsonBlock = (v: unknown, testid?: string) => h('pre', { class: 'json', 'data-testid': testid }, json(v));

/** Parses a JSON field, or puts why not at it (and throws). Empty is null. */
function parseField(el: HTMLTextAreaElement, error: HTMLElement): unknown {
  if (!el.value.trim()) return null;
  try {
    return JSON.parse(el.value);
  } catch (e) {
    error.textContent = `not JSON: ${(e as Error).message}`;
    el.focus();
    throw e;
  }
}

/** Ctrl+Enter in a JSON field submits its form, as on the query page. */
function submitOnCtrlEnter(el: HTMLTextAreaElement): void {
  el.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      el.form?.requestSubmit();
    }
  });
}

/** Fills `section` with the device's commands and a form to send one;
 * returns what stops its live updates. */
export function commandsPanel(section: HTMLElement, deviceId: string): () => void {
  const box = errorBox();
  const listBox = errorBox();
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'reboot' }) as HTMLInputElement;
  const payload = h('textarea', { name: 'payload', rows: 2, spellcheck: 'false', placeholder: '{"delay": 5}' }) as HTMLTextAreaElement;
  const timeout = h('input', { name: 'timeoutSecs', type: 'number', min: '1', step: '1', placeholder: '60' }) as HTMLInputElement;
  submitOnCtrlEnter(payload);
  const f = {
    name: field('Command', name),
    payload: field('Payload (JSON)', payload, 'optional; the device gets it as "payload"'),
    timeoutSecs: field('Timeout (s)', timeout, 'empty: 60; undelivered by then it expires, unanswered it times out'),
  };
  const send = h('button', { type: 'submit' }, 'Send command') as HTMLButtonElement;
  // Says what became of the command sent last, for screen readers too.
  const progress = h('span', { role: 'status', 'data-testid': 'command-progress' });
  const form = h('form', { class: 'edit card', 'data-testid': 'command-form', 'aria-label': 'Send a command' },
    Object.values(f).map((x) => x.wrap), h('div', { class: 'row' }, send, progress), box);
  const body = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Older commands') as HTMLButtonElement;
  fill(section, h('h2', { id: 'commands-h' }, 'Commands'),
    h('p', { class: 'muted' }, 'Sent over MQTT. Each goes queued → sent (the broker has it) → delivered (the device has it) → succeeded or failed with the device’s answer; or timed out (delivered, unanswered by its deadline) or expired (never delivered).'),
    form, listBox,
    h('div', { class: 'table-wrap' }, h('table', { class: 'cards', 'data-testid': 'commands' },
      h('caption', { class: 'sr-only' }, 'Recent commands, newest first'),
      h('thead', {}, h('tr', {}, ['Command', 'Status', 'Result', 'Queued', 'Progress', 'Deadline'].map((c) => h('th', { scope: 'col' }, c)))),
      body)),
    h('div', { class: 'pager' }, more));

  let commands: Command[] = [];
  let cursor: string | null = null;
  let last: string | null = null;
  let stopped = false;
  let reload: ReturnType<typeof setTimeout> | null = null;

  function row(c: Command): HTMLTableRowElement {
    const steps: [string, string | null][] = [['sent', c.sent_at], ['delivered', c.delivered_at], ['finished', c.finished_at]];
    return h('tr', { 'data-command': c.id, 'data-status': c.status },
      h('td', { 'data-label': 'Command' }, h('div', {}, h('strong', {}, c.name)),
        c.payload !== null && c.payload !== undefined ? h('code', { class: 'payload' }, JSON.stringify(c.payload)) : null),
      h('td', { 'data-label': 'Status', class: 'status' }, badge(c.status.replace('_', ' '), c.status)),
      h('td', { 'data-label': 'Result' }, c.result !== null && c.result !== undefined ? h('code', { class: 'answer' }, JSON.stringify(c.result))
        : h('span', { class: 'muted' }, FINAL.has(c.status) ? 'no answer body' : 'waiting…')),
      h('td', { 'data-label': 'Queued' }, fmtTime(c.created_at)),
      h('td', { 'data-label': 'Progress' }, h('ul', { class: 'steps' }, steps.filter(([, t]) => t).map(([k, t]) => h('li', {}, `${k} ${fmtTime(t)}`))),
        steps.some(([, t]) => t) ? null : h('span', { class: 'muted' }, '—')),
      h('td', { 'data-label': 'Deadline' }, fmtTime(c.deadline)));
  }

  function render() {
    fill(body, commands.length ? commands.map(row) : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No commands yet.')));
    more.hidden = !cursor;
  }

  function upsert(c: Command, flash = true) {
    const i = commands.findIndex((x) => x.id === c.id);
    const back = i >= 0 && (STAGE[c.status] ?? 0) < (STAGE[commands[i].status] ?? 0);
    if (!back) {
      if (i >= 0) commands[i] = c;
      else {
        commands.push(c);
        commands.sort((a, b) => (b.created_at ?? '').localeCompare(a.created_at ?? ''));
      }
      render();
      const tr = flash ? body.querySelector(`tr[data-command="${CSS.escape(c.id)}"]`) : null;
      tr?.classList.add('flash');
      if (tr) setTimeout(() => tr.classList.remove('flash'), 1500);
    }
    const shown = commands.find((x) => x.id === last);
    if (shown) progress.textContent = `${shown.name}: ${shown.status.replace('_', ' ')}`;
  }

  /** The newest page again, merged: what changed while no update could
   * arrive (before the subscription was in place, or while the socket was
   * away) shows. */
  async function loadNewest() {
    try {
      const { data, errors } = await run<{ commands: { commands: Command[]; next_cursor: string | null } }>('Commands', { deviceId, limit: PAGE });
      if (stopped) return;
      listBox.clear();
      if (errors.length) listBox.show(errors);
      if (!commands.length) cursor = data.commands.next_cursor;
      data.commands.commands.forEach((c) => upsert(c, false));
      render();
    } catch (e) {
      listBox.show(e);
      if (!commands.length) fill(body, h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'Commands unavailable (see the error above).')));
    }
  }

  more.addEventListener('click', async () => {
    if (!cursor) return;
    more.disabled = true;
    try {
      const { data, errors } = await run<{ commands: { commands: Command[]; next_cursor: string | null } }>('Commands', { deviceId, limit: PAGE, cursor });
      if (errors.length) listBox.show(errors);
      cursor = data.commands.next_cursor;
      data.commands.commands.forEach((c) => upsert(c, false));
      render();
    } catch (e) {
      listBox.show(e);
    } finally {
      more.disabled = false;
    }
  });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    box.clear();
    Object.values(f).forEach((x) => (x.error.textContent = ''));
    let args: unknown;
    try { args = parseField(payload, f.payload.error); } catch { return; }
    send.disabled = true;
    try {
      const { sendCommand: c } = await mutate<{ sendCommand: Command }>('SendCommand', {
        deviceId, name: name.value.trim(), payload: args, timeoutSecs: timeout.value ? Number(timeout.value) : null,
      });
      last = c.id;
      upsert(c);
    } catch (e) {
      // The registry names its fields as in gRPC (payload_json, timeout_secs).
      showFieldErrors(e, { name: f.name.error, payload: f.payload.error, payloadJson: f.payload.error, timeoutSecs: f.timeoutSecs.error }, box);
    } finally {
      send.disabled = false;
    }
  });

  const unsubscribe = subscribe<{ commandUpdates: Command }>('CommandUpdates', { deviceId },
    ({ commandUpdates }) => upsert(commandUpdates), (e) => listBox.show(e));
  // Each (re)connection: the newest page again once the subscription is
  // registered (it starts from now on), so no change in between is lost.
  const unwatch = watchSocket((s) => {
    if (s.state !== 'connected') return;
    if (reload) clearTimeout(reload);
    reload = setTimeout(() => { reload = null; void loadNewest(); }, 500);
  });
  fill(body, h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'Loading…')));
  void loadNewest();
  return () => {
    stopped = true;
    unsubscribe();
    unwatch();
    if (reload) clearTimeout(reload);
  };
}

/** Fills `section` with the device's desired and reported state and a form
 * to set the desired state; returns what stops its refreshing. */
export function statePanel(section: HTMLElement, deviceId: string): () => void {
  const box = errorBox();
  const formBox = errorBox();
  const desiredCard = h('div', { class: 'card state', 'data-testid': 'desired' });
  const reportedCard = h('div', { class: 'card state', 'data-testid': 'reported' });
  const difference = h('div', { 'data-testid': 'difference' });
  const desired = h('textarea', { name: 'desired', rows: 5, spellcheck: 'false' }) as HTMLTextAreaElement;
  const version = h('input', { name: 'expectedVersion', type: 'number', min: '0', step: '1', required: true }) as HTMLInputElement;
  submitOnCtrlEnter(desired);
  const f = {
    desired: field('New desired state (JSON object)', desired, 'The device gets it as a retained MQTT message.'),
    expectedVersion: field('Based on version', version, 'The version you edited; the API refuses it once another was set.'),
  };
  f.desired.wrap.classList.add('wide');
  // Shown when the state was changed elsewhere since the form was filled.
  const newer = h('div', { class: 'notice', 'aria-live': 'polite' });
  const saved = h('span', { class: 'ok', role: 'status' });
  const refresh = h('button', { type: 'button' }, 'Refresh') as HTMLButtonElement;
  const submit = h('button', { type: 'submit' }, 'Set desired state') as HTMLButtonElement;
  const form = h('form', { class: 'edit card', 'data-testid': 'desired-form', 'aria-label': 'Set the desired state' },
    Object.values(f).map((x) => x.wrap), newer, h('div', { class: 'row' }, submit, refresh, saved), formBox);
  fill(section, h('h2', { id: 'state-h' }, 'Desired and reported state'), box,
    h('div', { class: 'grid2' }, desiredCard, reportedCard), difference, form);

  let state: DeviceState | null = null;
  let stopped = false;

  function load(into: DeviceState) {
    desired.value = JSON.stringify(into.desired ?? {}, null, 2);
    version.value = String(into.desired_version);
    fill(newer);
  }

  function render() {
    const s = state!;
    const published = s.desired_version === 0 ? null
      : s.published_version >= s.desired_version ? 'the broker holds it for the device (retained)'
        : `being published (the broker holds version ${s.published_version})`;
    desiredCard.dataset.version = String(s.desired_version);
    fill(desiredCard, h('h3', {}, 'Desired'),
      h('p', { class: 'meta' }, s.desired_version ? [h('strong', { class: 'version' }, `version ${s.desired_version}`), `, set ${fmtTime(s.desired_at)}; ${published}`] : 'None set yet (version 0).'),
      jsonBlock(s.desired, 'desired-json'));
    reportedCard.dataset.reportedAt = s.reported_at ?? '';
    fill(reportedCard, h('h3', {}, 'Reported'),
      h('p', { class: 'meta' }, s.reported_at ? `by the device, ${fmtTime(s.reported_at)}` : 'The device has not reported its state yet.'),
      jsonBlock(s.reported, 'reported-json'));
    const keys = Object.keys(s.difference ?? {});
    difference.dataset.keys = String(keys.length);
    fill(difference, h('h3', {}, 'Difference'),
      !s.desired_version ? h('p', { class: 'muted' }, 'Nothing desired, so nothing differs.')
        : !keys.length ? h('p', { class: 'ok' }, 'The device reports what is desired.')
          : h('div', { class: 'table-wrap' }, h('table', { class: 'cards' },
            h('caption', { class: 'sr-only' }, 'Desired keys the device reports otherwise'),
            h('thead', {}, h('tr', {}, ['Key', 'Desired', 'Reported'].map((c) => h('th', { scope: 'col' }, c)))),
            h('tbody', {}, keys.map((k) => h('tr', { 'data-key': k },
              h('td', { 'data-label': 'Key' }, h('code', {}, k)),
              h('td', { 'data-label': 'Desired' }, h('code', {}, JSON.stringify(s.difference[k].desired))),
              h('td', { 'data-label': 'Reported' }, s.difference[k].reported === null || s.difference[k].reported === undefined
                ? h('span', { class: 'muted' }, 'missing') : h('code', {}, JSON.stringify(s.difference[k].reported)))))))));
    const base = Number(version.value);
    if (version.value !== '' && base !== s.desired_version) {
      const take = h('button', { type: 'button', class: 'small' }, `Load version ${s.desired_version}`);
      take.addEventListener('click', () => {
        load(s);
        f.expectedVersion.error.textContent = '';
        formBox.clear();
        desired.focus();
      });
      fill(newer, h('p', {}, `The desired state is at version ${s.desired_version} now, not ${base}: saving your text refuses until you load it.`), take);
    } else {
      fill(newer);
    }
  }

  async function read(first = false) {
    try {
      const { data, errors } = await run<{ deviceState: DeviceState }>('DeviceState', { deviceId });
      if (stopped) return;
      box.clear();
      if (errors.length) box.show(errors);
      state = data.deviceState;
      if (first) load(state);
      render();
    } catch (e) {
      box.show(e);
      if (!state) fill(desiredCard, h('h3', {}, 'Desired'), h('p', { class: 'muted' }, 'Unavailable (see the error above).'));
    }
  }

  refresh.addEventListener('click', () => void read());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    formBox.clear();
    saved.textContent = '';
    Object.values(f).forEach((x) => (x.error.textContent = ''));
    let want: unknown;
    try { want = parseField(desired, f.desired.error); } catch { return; }
    if (want === null) {
      f.desired.error.textContent = 'a JSON object, e.g. {"read_interval": 10}';
      desired.focus();
      return;
    }
    submit.disabled = true;
    try {
      const { setDesiredState: s } = await mutate<{ setDesiredState: DeviceState }>('SetDesiredState', {
        deviceId, desired: want, expectedVersion: Number(version.value),
      });
      state = s;
      load(s);
      render();
      saved.textContent = `Set: version ${s.desired_version}.`;
    } catch (e) {
      const errs = toErrors(e);
      const conflict = errs.find((x) => x.extensions?.code === 'CONFLICT');
      if (conflict) {
        f.expectedVersion.error.textContent = `${conflict.message} [CONFLICT]`;
        version.focus();
        // The current version, and the button that loads it.
        void read();
      } else {
        // The registry names its fields as in gRPC (desired_json, expected_version).
        showFieldErrors(e, { desired: f.desired.error, desiredJson: f.desired.error, expectedVersion: f.expectedVersion.error }, formBox);
      }
    } finally {
      submit.disabled = false;
    }
  });

  void read(true);
  const poll = setInterval(() => { if (!document.hidden) void read(); }, STATE_POLL_MS);
  return () => {
    stopped = true;
    clearInterval(poll);
  };
}
