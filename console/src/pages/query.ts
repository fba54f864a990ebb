// Query: any GraphQL operation against the API, with the signed-in
// credentials. It takes GraphiQL's place: served by the platform, so it
// works offline. Queries and mutations go over HTTP, subscriptions over
// the WebSocket (their events are listed as they come).
import { runText, subscribeText, describe } from '../api';
import { h, fill, field } from '../dom';
import { errorBox, pageHead, toErrors } from '../ui';

const EXAMPLE = `query ClusterHealth {
  deviceStatusSummary {
    total_devices
    active_devices
    offline_devices
    critical_alerts_count
    readings_per_second
  }
}`;

export function queryPage(main: HTMLElement): () => void {
  const errors = errorBox();
  const query = h('textarea', { name: 'query', rows: 14, spellcheck: 'false', class: 'mono' }) as HTMLTextAreaElement;
  query.value = sessionStorage.getItem('iot-console-query') ?? EXAMPLE;
  const vars = h('textarea', { name: 'variables', rows: 4, spellcheck: 'false', class: 'mono' }) as HTMLTextAreaElement;
  vars.value = sessionStorage.getItem('iot-console-variables') ?? '{}';
  const out = h('pre', { class: 'result mono', 'aria-live': 'polite', tabindex: '0', 'data-testid': 'result' });
  const runB = h('button', { type: 'submit' }, 'Run (Ctrl+Enter)');
  const stopB = h('button', { type: 'button', hidden: true }, 'Stop subscription') as HTMLButtonElement;
  const form = h('form', { class: 'query' }, field('Operation', query).wrap, field('Variables (JSON)', vars).wrap, h('div', { class: 'row' }, runB, stopB), errors);
  fill(main, pageHead('Query'), h('p', { class: 'muted' }, 'Runs against /graphql as the signed-in caller. The schema is in docs/graphql.md.'), form, out);

  let sub: (() => void) | null = null;
  const stopSub = () => { sub?.(); sub = null; stopB.hidden = true; };
  stopB.addEventListener('click', stopSub);

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errors.clear();
    stopSub();
    sessionStorage.setItem('iot-console-query', query.value);
    sessionStorage.setItem('iot-console-variables', vars.value);
    let variables: Record<string, unknown>;
    try { variables = vars.value.trim() ? JSON.parse(vars.value) : {}; } catch (e) { errors.show(new Error(`variables are not JSON: ${(e as Error).message}`)); return; }
    if (/^\s*(#.*\n\s*)*subscription\b/.test(query.value)) {
      const events: unknown[] = [];
      out.textContent = 'waiting for events…';
      stopB.hidden = false;
      sub = subscribeText(query.value, variables, (d) => { events.unshift(d); out.textContent = JSON.stringify(events.slice(0, 50), null, 2); },
        (e) => errors.show(e), () => { stopB.hidden = true; });
      return;
    }
    try {
      const r = await runText(query.value, variables);
      out.textContent = JSON.stringify(r.errors.length ? { data: r.data, errors: r.errors } : { data: r.data }, null, 2);
      if (r.errors.length) errors.show(r.errors);
    } catch (e) {
      out.textContent = toErrors(e).map(describe).join('\n');
      errors.show(e);
    }
  });
  form.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); } });
  return stopSub;
}
