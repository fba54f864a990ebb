// A list of alerts with acknowledge and resolve, used by the alerts page
// and the device page; rows change in place as the subscription reports.
import { mutate } from './api';
import { h, fill, fmtTime, fmtNum } from './dom';
import { badge } from './ui';

export type Alert = {
  id: string;
  device_uuid: string;
  device: { device_id: string; name: string } | null;
  alert_type: string;
  severity: string;
  sensor_name: string | null;
  message: string | null;
  value: number | null;
  threshold: number | null;
  state: string;
  acknowledged: boolean;
  created_at: string | null;
  last_seen_at: string | null;
  occurrences: number;
  resolved_at: string | null;
  cursor: string;
};

export function alertList(opts: { showDevice: boolean; errors: { show: (e: unknown) => void } }) {
  const body = h('tbody');
  const heads = ['Severity', 'State', ...(opts.showDevice ? ['Device'] : []), 'Type', 'Sensor', 'Value', 'Threshold', 'Raised', 'Seen', ''];
  const el = h('div', { class: 'table-wrap' },
    h('table', { class: 'alerts cards', 'data-testid': 'alerts' },
      h('caption', { class: 'sr-only' }, 'Alerts'),
      h('thead', {}, h('tr', {}, heads.map((c) => h('th', { scope: 'col' }, c)))),
      body));
  let alerts: Alert[] = [];
  let keep: (a: Alert) => boolean = () => true;

  async function act(a: Alert, name: 'AcknowledgeAlert' | 'ResolveAlert', button: HTMLButtonElement) {
    button.disabled = true;
    try {
      const data = await mutate<Record<string, Partial<Alert>>>(name, { alertId: a.id });
      const changed = Object.values(data)[0];
      upsert({ ...a, ...changed });
    } catch (e) {
      button.disabled = false;
      opts.errors.show(e);
    }
  }

  function row(a: Alert): HTMLTableRowElement {
    const ack = h('button', { type: 'button', class: 'small', 'data-action': 'acknowledge', 'aria-label': `Acknowledge ${a.alert_type} on ${a.device?.device_id ?? a.device_uuid}` }, 'Acknowledge') as HTMLButtonElement;
    const res = h('button', { type: 'button', class: 'small', 'data-action': 'resolve', 'aria-label': `Resolve ${a.alert_type} on ${a.device?.device_id ?? a.device_uuid}` }, 'Resolve') as HTMLButtonElement;
    ack.addEventListener('click', () => act(a, 'AcknowledgeAlert', ack));
    res.addEventListener('click', () => act(a, 'ResolveAlert', res));
    return h('tr', { 'data-alert': a.id, 'data-state': a.state, 'data-device': a.device?.device_id ?? '' },
      h('td', { 'data-label': 'Severity' }, badge(a.severity)),
      h('td', { 'data-label': 'State', class: 'state' }, badge(a.state)),
      opts.showDevice ? h('td', { 'data-label': 'Device' }, a.device ? h('a', { href: `#/device/${encodeURIComponent(a.device_uuid)}` }, a.device.device_id) : a.device_uuid) : null,
      h('td', { 'data-label': 'Type', title: a.message ?? '' }, a.alert_type),
      h('td', { 'data-label': 'Sensor' }, a.sensor_name ?? '—'),
      h('td', { 'data-label': 'Value' }, fmtNum(a.value)),
      h('td', { 'data-label': 'Threshold' }, fmtNum(a.threshold)),
      h('td', { 'data-label': 'Raised' }, fmtTime(a.created_at)),
      h('td', { 'data-label': 'Seen' }, `${fmtTime(a.last_seen_at)} (${a.occurrences}×)`),
      h('td', { class: 'actions' }, a.state === 'open' ? ack : null, a.state !== 'resolved' ? res : null));
  }

  function render() {
    const shown = alerts.filter(keep);
    fill(body, shown.length ? shown.map(row) : h('tr', {}, h('td', { colspan: heads.length, class: 'empty' }, 'No alerts.')));
  }

  function upsert(a: Alert) {
    const i = alerts.findIndex((x) => x.id === a.id);
    if (i >= 0) alerts[i] = { ...alerts[i], ...a };
    else alerts.unshift(a);
    render();
    const tr = body.querySelector(`tr[data-alert="${CSS.escape(a.id)}"]`);
    tr?.classList.add('flash');
    setTimeout(() => tr?.classList.remove('flash'), 1500);
  }

  return {
    el,
    set(list: Alert[]) { alerts = list; render(); },
    /** The list could not be read: says so in the table too. */
    unavailable() { fill(body, h('tr', {}, h('td', { colspan: heads.length, class: 'empty' }, 'Alerts unavailable (see the error above).'))); },
    append(list: Alert[]) { alerts = alerts.concat(list.filter((a) => !alerts.some((x) => x.id === a.id))); render(); },
    upsert,
    filter(f: (a: Alert) => boolean) { keep = f; render(); },
    last(): Alert | undefined { return alerts[alerts.length - 1]; },
  };
}
