// Device: details and config, current readings, a chart per sensor that
// the `metrics` subscription extends, the device's alerts, its commands
// and desired versus reported state (pages/commands.ts), editing, and
// rotating its MQTT password.
import { run, mutate, subscribe } from '../api';
import { h, fill, fmtTime, fmtNum, field } from '../dom';
import { errorBox, badge, onlineBadge, pageHead, showFieldErrors } from '../ui';
import { sensorChart, type Bucket } from '../chart';
import { alertList, type Alert } from '../alertlist';
import type { DeviceRow } from './fleet';
import { commandsPanel, statePanel } from './commands';

type Device = Omit<DeviceRow, 'cursor'> & {
  latitude: number | null;
  longitude: number | null;
  created_at: string | null;
  owner_id: string;
  config: { read_interval: number; alert_threshold: unknown; data_retention_days: number | null; custom_fields: unknown } | null;
  sensors: { sensor_name: string; unit: string | null; sensor_type: string | null }[];
  current_readings: { sensor_name: string; value: number; unit: string | null; quality: string | null; time: string | null }[] | null;
};

/** Ranges and the bucket width each is drawn with (about 60–370 points). */
export const RANGES: { label: string; ms: number; granularity: string }[] = [
  { label: '1 h', ms: 3600e3, granularity: '1m' },
  { label: '24 h', ms: 86400e3, granularity: '15m' },
  { label: '7 d', ms: 7 * 86400e3, granularity: '1h' },
  { label: '30 d', ms: 30 * 86400e3, granularity: '6h' },
  { label: '1 y', ms: 365 * 86400e3, granularity: '1d' },
];

export function devicePage(main: HTMLElement, id: string): () => void {
  const errors = errorBox();
  const head = h('div');
  const details = h('section', { 'aria-labelledby': 'details-h' });
  const readings = h('section', { 'aria-labelledby': 'readings-h', class: 'readings' });
  const rangeBar = h('div', { class: 'ranges', role: 'group', 'aria-label': 'Chart range' });
  const charts = h('div', { class: 'charts', 'data-testid': 'charts' });
  const alertErrors = errorBox();
  const alerts = alertList({ showDevice: false, errors: alertErrors });
  const commands = h('section', { 'aria-labelledby': 'commands-h' });
  const state = h('section', { 'aria-labelledby': 'state-h' });
  const edit = h('section', { 'aria-labelledby': 'edit-h' });
  const creds = h('section', { 'aria-labelledby': 'creds-h' });
  fill(main, head, errors,
    h('div', { class: 'grid2' }, details, readings),
    h('section', { 'aria-labelledby': 'charts-h' }, h('h2', { id: 'charts-h' }, 'Charts'), rangeBar, charts),
    h('section', { 'aria-labelledby': 'alerts-h' }, h('h2', { id: 'alerts-h' }, 'Alerts'), alertErrors, alerts.el),
    commands, state, edit, creds);

  let device: Device | null = null;
  let range = RANGES[0];
  let span = { start: '', end: '' };
  let chartsBySensor = new Map<string, ReturnType<typeof sensorChart>>();
  let metricsSub: (() => void) | null = null;
  let alertSub: (() => void) | null = null;
  let statusSub: (() => void) | null = null;
  let stopCommands: (() => void) | null = null;
  let stopState: (() => void) | null = null;
  let refresh: ReturnType<typeof setTimeout> | null = null;
  let stopped = false;

  for (const r of RANGES) {
    const b = h('button', { type: 'button', 'aria-pressed': r === range ? 'true' : 'false', 'data-range': r.label }, r.label);
    b.addEventListener('click', () => {
      range = r;
      rangeBar.querySelectorAll('button').forEach((x) => x.setAttribute('aria-pressed', x === b ? 'true' : 'false'));
      void loadCharts();
    });
    rangeBar.append(b);
  }

  async function load() {
    try {
      const { data, errors: errs } = await run<{ device: Device | null }>('Device', { id });
      if (stopped) return;
      errors.clear();
      if (errs.length) errors.show(errs);
      if (!data.device) {
        fill(head, pageHead('No such device'));
        errors.show([{ message: `You have no device ${id}.`, extensions: { code: 'NOT_FOUND' } }]);
        return;
      }
      const first = !device;
      device = data.device;
      renderHead();
      renderDetails();
      renderReadings();
      if (first) {
        renderEdit();
        renderCreds();
        void loadCharts();
        void loadAlerts();
        stopCommands = commandsPanel(commands, device.id);
        stopState = statePanel(state, device.id);
        statusSub = subscribe<{ deviceStatus: Pick<Device, 'status' | 'online' | 'last_heartbeat'> }>('DeviceStatus', { deviceId: device.id },
          ({ deviceStatus }) => { if (device) { Object.assign(device, deviceStatus); renderHead(); } },
          (e) => errors.show(e));
      }
    } catch (e) {
      errors.show(e);
    }
  }

  function renderHead() {
    const d = device!;
    fill(head, pageHead(d.name,
      h('p', { class: 'sub' }, h('code', {}, d.device_id), ' ', badge(d.status), ' ', onlineBadge(d.online), ` last heard ${fmtTime(d.last_heartbeat)}`)));
  }

  function renderDetails() {
    const d = device!;
    const c = d.config;
    const row = (k: string, v: Node | string) => [h('dt', {}, k), h('dd', {}, v)];
    fill(details, h('h2', { id: 'details-h' }, 'Details'), h('dl', { class: 'kv' },
      row('Platform id', h('code', {}, d.id)), row('Type', d.device_type), row('Location', d.location ?? '—'),
      row('Coordinates', d.latitude !== null && d.longitude !== null ? `${d.latitude}, ${d.longitude}` : '—'),
      row('Registered', fmtTime(d.created_at)),
      row('Read interval', c ? `${c.read_interval} s` : '—'),
      row('Thresholds', h('code', {}, JSON.stringify(c?.alert_threshold ?? null))),
      row('Retention', c?.data_retention_days ? `${c.data_retention_days} days` : 'platform default'),
      row('Custom fields', h('code', {}, JSON.stringify(c?.custom_fields ?? null)))));
  }

  function renderReadings() {
    const r = device!.current_readings;
    fill(readings, h('h2', { id: 'readings-h' }, 'Current readings'),
      r === null ? h('p', { class: 'muted' }, 'Unavailable (see the error above).')
        : r.length ? h('ul', { class: 'tiles' }, r.map((x) => h('li', { class: 'tile', 'data-sensor': x.sensor_name },
          h('span', { class: 'n' }, fmtNum(x.value), x.unit ? h('small', {}, ` ${x.unit}`) : null),
          h('span', { class: 'l' }, x.sensor_name), h('span', { class: 'muted' }, fmtTime(x.time)))))
          : h('p', { class: 'muted' }, 'No readings yet.'));
  }

  function sensors(): { name: string; unit: string | null }[] {
    const d = device!;
    const out = new Map<string, string | null>();
    for (const s of d.sensors) out.set(s.sensor_name, s.unit);
    for (const r of d.current_readings ?? []) if (!out.has(r.sensor_name) || !out.get(r.sensor_name)) out.set(r.sensor_name, r.unit);
    return [...out].sort(([a], [b]) => a.localeCompare(b)).map(([name, unit]) => ({ name, unit }));
  }

  async function loadCharts() {
    if (!device) return;
    metricsSub?.();
    chartsBySensor.forEach((c) => c.destroy());
    chartsBySensor = new Map();
    const end = new Date();
    span = { start: new Date(end.getTime() - range.ms).toISOString(), end: end.toISOString() };
    charts.dataset.start = span.start;
    charts.dataset.end = span.end;
    charts.dataset.granularity = range.granularity;
    charts.dataset.loaded = 'false';
    const list = sensors();
    fill(charts, list.length ? null : h('p', { class: 'muted' }, 'No sensors yet.'));
    await Promise.all(list.map(async (s) => {
      const c = sensorChart(s.name, s.unit);
      chartsBySensor.set(s.name, c);
      charts.append(c.el);
      try {
        const { data, errors: errs } = await run<{ sensorMetrics: Bucket[] }>('SensorMetrics', {
          deviceId: device!.id, sensorName: s.name, startTime: span.start, endTime: span.end, granularity: range.granularity,
        });
        if (errs.length) errors.show(errs);
        c.set(data.sensorMetrics);
      } catch (e) {
        errors.show(e);
        c.set([]);
      }
    }));
    charts.dataset.loaded = 'true';
    metricsSub = subscribe<{ metrics: Bucket & { sensor_name: string } }>('Metrics', { deviceId: device.id, granularity: range.granularity },
      ({ metrics }) => {
        let c = chartsBySensor.get(metrics.sensor_name);
        if (!c) {
          c = sensorChart(metrics.sensor_name, null);
          chartsBySensor.set(metrics.sensor_name, c);
          charts.append(c.el);
          c.set([]);
        }
        c.live(metrics, span.start);
        // The latest values: the device again, at most once a second.
        if (!refresh) refresh = setTimeout(() => { refresh = null; void load(); }, 1000);
      },
      (e) => errors.show(e));
  }

  async function loadAlerts() {
    if (!device) return;
    try {
      const { data, errors: errs } = await run<{ alerts: Alert[] }>('Alerts', { deviceId: device.id, limit: 50 });
      if (errs.length) alertErrors.show(errs);
      alerts.set(data.alerts);
    } catch (e) {
      alertErrors.show(e);
      alerts.unavailable();
    }
    alertSub = subscribe<{ alerts: Alert }>('AlertChanges', { deviceId: device.id }, ({ alerts: a }) => alerts.upsert(a), (e) => alertErrors.show(e));
  }

  function renderEdit() {
    const d = device!;
    const c = d.config;
    const box = errorBox();
    const name = h('input', { name: 'name', value: d.name }) as HTMLInputElement;
    const type = h('input', { name: 'deviceType', value: d.device_type }) as HTMLInputElement;
    const location = h('input', { name: 'location', value: d.location ?? '' }) as HTMLInputElement;
    const status = h('select', { name: 'status' }, ['active', 'inactive', 'error'].map((s) => h('option', { value: s, selected: s === d.status }, s))) as HTMLSelectElement;
    const interval = h('input', { name: 'readInterval', type: 'number', min: '1', value: String(c?.read_interval ?? '') }) as HTMLInputElement;
    const retention = h('input', { name: 'dataRetentionDays', type: 'number', min: '1', value: c?.data_retention_days ? String(c.data_retention_days) : '' }) as HTMLInputElement;
    const thresholds = h('textarea', { name: 'alertThreshold', rows: 3, spellcheck: 'false' }) as HTMLTextAreaElement;
    thresholds.value = JSON.stringify(c?.alert_threshold ?? {}, null, 1);
    const custom = h('textarea', { name: 'customFields', rows: 3, spellcheck: 'false' }) as HTMLTextAreaElement;
    custom.value = JSON.stringify(c?.custom_fields ?? {}, null, 1);
    const f = {
      name: field('Name', name), deviceType: field('Type', type), location: field('Location', location), status: field('Status', status),
      readInterval: field('Read interval (s)', interval), dataRetentionDays: field('Retention (days)', retention, 'empty: the platform default'),
      alertThreshold: field('Alert thresholds (JSON)', thresholds, 'per sensor min and/or max, e.g. {"temperature": {"max": 30}}'),
      customFields: field('Custom fields (JSON)', custom),
    };
    const saved = h('span', { class: 'ok', role: 'status' });
    const form = h('form', { class: 'edit card' }, Object.values(f).map((x) => x.wrap), h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save'), saved), box);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      box.clear();
      saved.textContent = '';
      Object.values(f).forEach((x) => (x.error.textContent = ''));
      const json = (el: HTMLTextAreaElement, key: keyof typeof f) => {
        try { return el.value.trim() ? JSON.parse(el.value) : null; } catch (e) { f[key].error.textContent = `not JSON: ${(e as Error).message}`; throw e; }
      };
      let config: Record<string, unknown>;
      try {
        config = { readInterval: interval.value ? Number(interval.value) : null, alertThreshold: json(thresholds, 'alertThreshold'), customFields: json(custom, 'customFields') };
      } catch { return; }
      if (retention.value) config.dataRetentionDays = Number(retention.value);
      const errorsByField = Object.fromEntries(Object.entries(f).map(([k, v]) => [k, v.error]));
      try {
        await mutate('UpdateDevice', { id: d.id, name: name.value, deviceType: type.value, location: location.value || null, status: status.value });
        await mutate('UpdateDeviceConfig', { id: d.id, config });
        saved.textContent = 'Saved.';
        void load();
      } catch (e) {
        showFieldErrors(e, errorsByField, box);
      }
    });
    fill(edit, h('h2', { id: 'edit-h' }, 'Edit'), form);
  }

  function renderCreds() {
    const out = h('div', { 'aria-live': 'polite' });
    const box = errorBox();
    const rotate = h('button', { type: 'button', class: 'danger' }, 'Rotate MQTT password') as HTMLButtonElement;
    rotate.addEventListener('click', async () => {
      if (!confirm('Issue a new MQTT password? The old one stops working at once.')) return;
      box.clear();
      rotate.disabled = true;
      try {
        const { rotateDeviceCredentials: c } = await mutate<{ rotateDeviceCredentials: { username: string; password: string; publish_topics: string[] } }>('RotateCredentials', { id: device!.id });
        fill(out, h('div', { class: 'secret card', 'data-testid': 'new-password' },
          h('p', {}, h('strong', {}, 'New password — shown only now; copy it to the device.')),
          h('dl', { class: 'kv' }, h('dt', {}, 'Username'), h('dd', {}, h('code', {}, c.username)), h('dt', {}, 'Password'), h('dd', {}, h('code', { class: 'password' }, c.password)),
            h('dt', {}, 'May publish to'), h('dd', {}, c.publish_topics.join(', '))),
          h('button', { type: 'button', onclick: () => fill(out) }, 'Done, hide it')));
      } catch (e) {
        box.show(e);
      } finally {
        rotate.disabled = false;
      }
    });
    fill(creds, h('h2', { id: 'creds-h' }, 'Credentials'), h('p', { class: 'muted' }, 'The device’s MQTT password is never shown again after it is issued.'), rotate, box, out);
  }

  void load();
  return () => {
    stopped = true;
    metricsSub?.(); alertSub?.(); statusSub?.(); stopCommands?.(); stopState?.();
    if (refresh) clearTimeout(refresh);
    chartsBySensor.forEach((c) => c.destroy());
  };
}
