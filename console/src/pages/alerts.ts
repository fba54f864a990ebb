// Alerts: the caller's alerts with filters, kept live by the `alerts`
// subscription; acknowledge and resolve.
import { run, subscribe } from '../api';
import { h, fill, field } from '../dom';
import { errorBox, pageHead } from '../ui';
import { alertList, type Alert } from '../alertlist';

const PAGE = 50;

export function alertsPage(main: HTMLElement): () => void {
  const errors = errorBox();
  const severity = h('select', { name: 'severity' }, ['', 'info', 'warning', 'critical'].map((s) => h('option', { value: s }, s || 'any'))) as HTMLSelectElement;
  const state = h('select', { name: 'state' }, ['', 'open', 'acknowledged', 'resolved'].map((s) => h('option', { value: s }, s || 'any'))) as HTMLSelectElement;
  state.value = '';
  const device = h('input', { name: 'device', placeholder: 'device UUID' }) as HTMLInputElement;
  const filters = h('form', { class: 'filters', role: 'search' },
    field('Severity', severity).wrap, field('State', state).wrap, field('Device', device).wrap, h('button', { type: 'submit' }, 'Apply'));
  const list = alertList({ showDevice: true, errors });
  const more = h('button', { type: 'button' }, 'Load more') as HTMLButtonElement;
  fill(main, pageHead('Alerts'), errors, filters, list.el, h('div', { class: 'pager' }, more));

  let sub: (() => void) | null = null;
  let stopped = false;

  const vars = () => ({ severity: severity.value || null, state: state.value || null, deviceId: device.value.trim() || null, limit: PAGE });

  async function load(after: string | null) {
    errors.clear();
    try {
      const { data, errors: errs } = await run<{ alerts: Alert[] }>('Alerts', { ...vars(), after });
      if (stopped) return;
      if (errs.length) errors.show(errs);
      if (after) list.append(data.alerts);
      else list.set(data.alerts);
      more.disabled = data.alerts.length < PAGE;
    } catch (e) {
      errors.show(e);
      if (!after) list.unavailable();
    }
  }

  function live() {
    sub?.();
    const v = vars();
    // The stream filters by device and severity; state is checked here.
    list.filter((a) => !v.state || a.state === v.state);
    sub = subscribe<{ alerts: Alert }>('AlertChanges', { deviceId: v.deviceId, severity: v.severity },
      ({ alerts: a }) => list.upsert(a), (e) => errors.show(e));
  }

  filters.addEventListener('submit', (ev) => { ev.preventDefault(); void load(null); live(); });
  more.addEventListener('click', () => { const last = list.last(); if (last) void load(last.cursor); });
  void load(null);
  live();
  return () => { stopped = true; sub?.(); };
}
