// Fleet: status counts, the devices a page at a time with search and
// filters, each shown device's status kept live.
import { run, subscribe } from '../api';
import { h, fill, fmtTime, field } from '../dom';
import { errorBox, badge, onlineBadge, pageHead } from '../ui';

/** The fields of the DeviceRow fragment. */
export type DeviceRow = {
  id: string;
  device_id: string;
  name: string;
  device_type: string;
  location: string | null;
  status: string;
  online: boolean;
  last_heartbeat: string | null;
  cursor: string;
};
type Summary = {
  total_devices: number;
  active_devices: number;
  offline_devices: number;
  inactive_devices: number;
  error_devices: number;
  critical_alerts_count: number;
  readings_per_second: number;
  average_response_time_ms: number;
};

const PAGE = 25;

export function fleetPage(main: HTMLElement): () => void {
  const errors = errorBox();
  const summary = h('section', { class: 'summary', 'aria-label': 'Fleet status', 'aria-live': 'polite' });
  const search = h('input', { type: 'search', placeholder: 'device id, name or location', name: 'search' }) as HTMLInputElement;
  const type = h('input', { type: 'text', name: 'type', placeholder: 'any' }) as HTMLInputElement;
  const status = h('select', { name: 'status' }, ['', 'active', 'inactive', 'error'].map((s) => h('option', { value: s }, s || 'any'))) as HTMLSelectElement;
  const online = h('select', { name: 'online' }, h('option', { value: '' }, 'any'), h('option', { value: 'yes' }, 'online'), h('option', { value: 'no' }, 'offline')) as HTMLSelectElement;
  const filters = h('form', { class: 'filters', role: 'search' },
    field('Search', search).wrap, field('Type', type).wrap, field('Status', status).wrap, field('Online', online).wrap,
    h('button', { type: 'submit' }, 'Apply'));
  const body = h('tbody');
  const table = h('table', { class: 'devices cards', 'data-testid': 'devices' },
    h('caption', { class: 'sr-only' }, 'Devices'),
    h('thead', {}, h('tr', {}, ['Device', 'Name', 'Type', 'Location', 'Status', 'Online', 'Last heard'].map((c) => h('th', { scope: 'col' }, c)))),
    body);
  const pageInfo = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button' }, '← Previous') as HTMLButtonElement;
  const next = h('button', { type: 'button' }, 'Next →') as HTMLButtonElement;
  fill(main, pageHead('Fleet'), errors, summary, filters, h('div', { class: 'table-wrap' }, table), h('div', { class: 'pager' }, prev, pageInfo, next));

  // Cursors of the pages seen, so Previous goes back.
  let cursors: (string | null)[] = [null];
  let devices: DeviceRow[] = [];
  let live: (() => void)[] = [];
  let stopped = false;

  const stopLive = () => { live.forEach((f) => f()); live = []; };

  async function loadSummary() {
    try {
      const { data, errors: errs } = await run<{ deviceStatusSummary: Summary }>('StatusSummary');
      if (errs.length) errors.show(errs);
      const s = data.deviceStatusSummary;
      const tile = (label: string, v: number | string, key: string) =>
        h('div', { class: `tile tile-${key}`, 'data-count': key }, h('span', { class: 'n' }, v), h('span', { class: 'l' }, label));
      fill(summary,
        tile('devices', s.total_devices, 'total'), tile('active', s.active_devices, 'active'),
        tile('offline', s.offline_devices, 'offline'), tile('inactive', s.inactive_devices, 'inactive'),
        tile('error', s.error_devices, 'error'), tile('critical alerts', s.critical_alerts_count, 'critical'),
        tile('readings/s', s.readings_per_second.toFixed(1), 'rate'));
    } catch (e) {
      errors.show(e);
    }
  }

  function row(d: DeviceRow): HTMLTableRowElement {
    return h('tr', { 'data-device': d.device_id, 'data-id': d.id },
      h('td', { 'data-label': 'Device' }, h('a', { href: `#/device/${encodeURIComponent(d.id)}` }, d.device_id)),
      h('td', { 'data-label': 'Name' }, d.name),
      h('td', { 'data-label': 'Type' }, d.device_type),
      h('td', { 'data-label': 'Location' }, d.location ?? '—'),
      h('td', { 'data-label': 'Status', class: 'status' }, badge(d.status)),
      h('td', { 'data-label': 'Online', class: 'online' }, onlineBadge(d.online)),
      h('td', { 'data-label': 'Last heard', class: 'heard' }, fmtTime(d.last_heartbeat)));
  }

  function render() {
    const q = search.value.trim().toLowerCase();
    const want = online.value;
    const shown = devices.filter((d) =>
      (!q || [d.device_id, d.name, d.location ?? ''].some((x) => x.toLowerCase().includes(q))) &&
      (!want || d.online === (want === 'yes')));
    fill(body, shown.length ? shown.map(row) : h('tr', {}, h('td', { colspan: 7, class: 'empty' }, devices.length ? 'No device on this page matches.' : 'No devices.')));
    pageInfo.textContent = `page ${cursors.length}${q || want ? ` · ${shown.length} of ${devices.length} shown` : ''}`;
  }

  async function load() {
    errors.clear();
    stopLive();
    const q = search.value.trim();
    try {
      let list: DeviceRow[] = [];
      let more = false;
      const { data, errors: errs } = await run<{ devices: DeviceRow[] }>('Devices', {
        deviceType: type.value.trim() || null,
        status: status.value || null,
        limit: PAGE + 1,
        after: cursors[cursors.length - 1],
      });
      if (errs.length) errors.show(errs);
      list = data.devices.slice(0, PAGE);
      more = data.devices.length > PAGE;
      // An exact device id (or UUID) beyond this page is looked up too.
      if (q && !list.some((d) => d.device_id === q || d.id === q)) {
        const found = await run<{ device: DeviceRow | null }>('FindDevice', { id: q }).catch((e) => { errors.show(e); return null; });
        if (found?.data.device) list = [found.data.device, ...list];
      }
      if (stopped) return;
      devices = list;
      prev.disabled = cursors.length <= 1;
      next.disabled = !more;
      render();
      watch();
    } catch (e) {
      errors.show(e);
    }
  }

  // One subscription per shown device, multiplexed on one socket.
  function watch() {
    for (const d of devices) {
      live.push(subscribe<{ deviceStatus: Pick<DeviceRow, 'id' | 'status' | 'online' | 'last_heartbeat'> }>(
        'DeviceStatus', { deviceId: d.id },
        ({ deviceStatus: s }) => {
          const known = devices.find((x) => x.id === s.id);
          if (!known) return;
          const changed = known.status !== s.status || known.online !== s.online;
          Object.assign(known, s);
          const tr = body.querySelector<HTMLTableRowElement>(`tr[data-id="${CSS.escape(s.id)}"]`);
          if (tr) {
            fill(tr.querySelector('.status')!, badge(s.status));
            fill(tr.querySelector('.online')!, onlineBadge(s.online));
            fill(tr.querySelector('.heard')!, fmtTime(s.last_heartbeat));
            if (changed) { tr.classList.add('flash'); setTimeout(() => tr.classList.remove('flash'), 1500); void loadSummary(); }
          }
        },
        (errs) => errors.show(errs)));
    }
  }

  filters.addEventListener('submit', (ev) => { ev.preventDefault(); cursors = [null]; void load(); });
  search.addEventListener('input', render);
  online.addEventListener('change', render);
  next.addEventListener('click', () => { const last = devices[devices.length - 1]; if (last) { cursors.push(last.cursor); void load(); } });
  prev.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); void load(); } });

  void loadSummary();
  void load();
  const timer = setInterval(loadSummary, 15000);
  return () => { stopped = true; clearInterval(timer); stopLive(); };
}
