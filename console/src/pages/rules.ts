// Rules and webhooks: list, create and edit rules; list, create, edit
// (in their row) and delete webhooks. The API's validation errors show at
// their fields.
import { run, mutate } from '../api';
import { h, fill, fmtTime, field } from '../dom';
import { errorBox, badge, pageHead, showFieldErrors } from '../ui';

type Rule = {
  id: string; name: string; condition: string; clear_condition: string | null; severity: string; message: string | null;
  for_secs: number; device_type: string | null; enabled: boolean; owner_id: string | null; updated_at: string | null;
};
type Webhook = { id: string; url: string; min_severity: string; pending: number; delivered: number; failed: number; last_error: string | null };

export function rulesPage(main: HTMLElement): () => void {
  const errors = errorBox();
  const rulesBody = h('tbody');
  const formSlot = h('div');
  const hooksBody = h('tbody');
  const hookSlot = h('div');
  // A secret rotated by an edit, shown once (the row is redrawn).
  const rotatedSlot = h('div', { 'aria-live': 'polite' });
  // What became of the last save, read out by screen readers.
  const status = h('p', { role: 'status', class: 'ok status' });
  const newRule = h('button', { type: 'button' }, 'New rule') as HTMLButtonElement;
  newRule.addEventListener('click', () => ruleForm(null));
  fill(main, pageHead('Rules & webhooks'), errors,
    h('section', { 'aria-labelledby': 'rules-h' }, h('div', { class: 'row' }, h('h2', { id: 'rules-h' }, 'Alert rules'), newRule), formSlot, status,
      h('div', { class: 'table-wrap' }, h('table', { class: 'cards', 'data-testid': 'rules' },
        h('thead', {}, h('tr', {}, ['Name', 'Condition', 'Severity', 'For', 'Device type', 'Enabled', 'Updated', ''].map((c) => h('th', { scope: 'col' }, c)))), rulesBody))),
    h('section', { 'aria-labelledby': 'hooks-h' }, h('h2', { id: 'hooks-h' }, 'Webhooks'), hookSlot, rotatedSlot,
      h('div', { class: 'table-wrap' }, h('table', { class: 'cards', 'data-testid': 'webhooks' },
        h('thead', {}, h('tr', {}, ['URL', 'Min severity', 'Pending', 'Delivered', 'Failed', 'Last error', ''].map((c) => h('th', { scope: 'col' }, c)))), hooksBody))));

  async function loadRules() {
    try {
      const { data, errors: errs } = await run<{ alertRules: Rule[] }>('Rules');
      if (errs.length) errors.show(errs);
      fill(rulesBody, data.alertRules.length ? data.alertRules.map((r) => h('tr', { 'data-rule': r.name },
        h('td', { 'data-label': 'Name' }, h('code', {}, r.name)),
        h('td', { 'data-label': 'Condition' }, h('code', {}, r.condition)),
        h('td', { 'data-label': 'Severity' }, badge(r.severity)),
        h('td', { 'data-label': 'For' }, `${r.for_secs} s`),
        h('td', { 'data-label': 'Device type' }, r.device_type ?? 'all'),
        h('td', { 'data-label': 'Enabled' }, r.enabled ? 'yes' : 'no'),
        h('td', { 'data-label': 'Updated' }, fmtTime(r.updated_at)),
        h('td', { class: 'actions' }, r.owner_id === null ? h('span', { class: 'muted' }, 'platform-wide')
          : [h('button', { type: 'button', class: 'small', onclick: () => ruleForm(r) }, 'Edit'),
            h('button', { type: 'button', class: 'small danger', onclick: () => deleteRule(r) }, 'Delete')])))
        : h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No rules.')));
    } catch (e) {
      errors.show(e);
    }
  }

  async function deleteRule(r: Rule) {
    if (!confirm(`Delete rule ${r.name}? Its open alerts are resolved.`)) return;
    try { await mutate('DeleteRule', { id: r.id }); void loadRules(); } catch (e) { errors.show(e); }
  }

  function ruleForm(r: Rule | null) {
    const box = errorBox();
    const name = h('input', { name: 'name', value: r?.name ?? '', required: true, pattern: '[a-z0-9_]{1,50}' }) as HTMLInputElement;
    const condition = h('textarea', { name: 'condition', rows: 2, required: true, spellcheck: 'false' }) as HTMLTextAreaElement;
    condition.value = r?.condition ?? '';
    const clear = h('textarea', { name: 'clearCondition', rows: 2, spellcheck: 'false' }) as HTMLTextAreaElement;
    clear.value = r?.clear_condition ?? '';
    const severity = h('select', { name: 'severity' }, ['info', 'warning', 'critical'].map((s) => h('option', { value: s, selected: s === (r?.severity ?? 'warning') }, s))) as HTMLSelectElement;
    const message = h('input', { name: 'message', value: r?.message ?? '' }) as HTMLInputElement;
    const forSecs = h('input', { name: 'forSecs', type: 'number', min: '0', value: String(r?.for_secs ?? 0) }) as HTMLInputElement;
    const deviceType = h('input', { name: 'deviceType', value: r?.device_type ?? '' }) as HTMLInputElement;
    const enabled = h('input', { name: 'enabled', type: 'checkbox', checked: r ? r.enabled : true }) as HTMLInputElement;
    const f = {
      name: field('Name', name, '[a-z0-9_]{1,50}: the alert_type of its alerts'),
      condition: field('Condition', condition, 'e.g. sensor_name == "temperature" AND value > 100'),
      clearCondition: field('Clear condition', clear, 'optional: resolve only once this holds'),
      severity: field('Severity', severity), message: field('Message', message), forSecs: field('For (seconds)', forSecs),
      deviceType: field('Device type', deviceType, 'empty: all devices'), enabled: field('Enabled', enabled),
    };
    // Closing the form gives the focus back to where it was opened from.
    const close = () => {
      fill(formSlot);
      (r ? rulesBody.querySelector<HTMLElement>(`tr[data-rule="${CSS.escape(r.name)}"] button`) : newRule)?.focus();
    };
    const cancel = h('button', { type: 'button', class: 'link', onclick: close }, 'Cancel');
    const form = h('form', { class: 'edit card', 'data-testid': 'rule-form', 'aria-label': r ? `Edit rule ${r.name}` : 'New rule' },
      Object.values(f).map((x) => x.wrap), h('div', { class: 'row' }, h('button', { type: 'submit' }, r ? 'Save rule' : 'Create rule'), cancel), box);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      box.clear();
      status.textContent = '';
      Object.values(f).forEach((x) => (x.error.textContent = ''));
      const rule = {
        name: name.value.trim(), condition: condition.value.trim(), clearCondition: clear.value.trim() || null, severity: severity.value,
        message: message.value.trim() || null, forSecs: Number(forSecs.value || 0), deviceType: deviceType.value.trim() || null, enabled: enabled.checked,
      };
      try {
        if (r) await mutate('UpdateRule', { id: r.id, rule });
        else await mutate('CreateRule', { rule });
        fill(formSlot);
        await loadRules();
        // The focus goes to the saved rule's row (its Edit button).
        (rulesBody.querySelector<HTMLElement>(`tr[data-rule="${CSS.escape(rule.name)}"] button`) ?? newRule).focus();
        status.textContent = `Rule ${rule.name} ${r ? 'saved' : 'created'}.`;
      } catch (e) {
        showFieldErrors(e, Object.fromEntries(Object.entries(f).map(([k, v]) => [k, v.error])), box);
      }
    });
    fill(formSlot, form);
    name.focus();
  }

  async function loadHooks() {
    try {
      const { data, errors: errs } = await run<{ alertWebhooks: Webhook[] }>('Webhooks');
      if (errs.length) errors.show(errs);
      fill(hooksBody, data.alertWebhooks.length ? data.alertWebhooks.map((w) => {
        const row = h('tr', { 'data-webhook': w.id },
          h('td', { 'data-label': 'URL' }, h('code', {}, w.url)), h('td', { 'data-label': 'Min severity' }, badge(w.min_severity)),
          h('td', { 'data-label': 'Pending' }, w.pending), h('td', { 'data-label': 'Delivered' }, w.delivered), h('td', { 'data-label': 'Failed' }, w.failed),
          h('td', { 'data-label': 'Last error' }, w.last_error ?? '—'));
        row.append(h('td', { class: 'actions' },
          h('button', { type: 'button', class: 'small', onclick: () => editHook(row, w) }, 'Edit'),
          h('button', { type: 'button', class: 'small danger', onclick: () => deleteHook(w) }, 'Delete')));
        return row;
      })
        : h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No webhooks.')));
    } catch (e) {
      errors.show(e);
    }
  }

  async function deleteHook(w: Webhook) {
    if (!confirm(`Stop sending alert events to ${w.url}?`)) return;
    try { await mutate('DeleteWebhook', { id: w.id }); void loadHooks(); } catch (e) { errors.show(e); }
  }

  // The row becomes its form; saving or cancelling redraws the list.
  function editHook(row: HTMLElement, w: Webhook) {
    const box = errorBox();
    const url = h('input', { name: 'url', type: 'url', required: true, value: w.url }) as HTMLInputElement;
    const min = h('select', { name: 'minSeverity' }, ['info', 'warning', 'critical'].map((s) => h('option', { value: s, selected: s === w.min_severity }, s))) as HTMLSelectElement;
    const rotate = h('input', { name: 'rotateSecret', type: 'checkbox' }) as HTMLInputElement;
    const f = { url: field('URL', url), minSeverity: field('Min severity', min), rotateSecret: field('New signing secret', rotate, 'the old one stops; the new one is shown once') };
    // Saved or cancelled, the list is redrawn and the row's Edit button has the focus.
    const back = async () => {
      await loadHooks();
      hooksBody.querySelector<HTMLElement>(`tr[data-webhook="${CSS.escape(w.id)}"] button`)?.focus();
    };
    const cancel = h('button', { type: 'button', class: 'link', onclick: () => void back() }, 'Cancel');
    const form = h('form', { class: 'edit', 'data-testid': 'webhook-form', 'aria-label': `Edit webhook ${w.url}` },
      Object.values(f).map((x) => x.wrap), h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save webhook'), cancel), box);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      box.clear();
      Object.values(f).forEach((x) => (x.error.textContent = ''));
      try {
        const { updateAlertWebhook: saved } = await mutate<{ updateAlertWebhook: Webhook & { secret: string | null } }>('UpdateWebhook',
          { id: w.id, url: url.value.trim(), minSeverity: min.value, rotateSecret: rotate.checked });
        fill(rotatedSlot, saved.secret ? h('p', { class: 'secret card' }, `New signing secret of ${saved.url} (shown only now): `, h('code', {}, saved.secret)) : []);
        await back();
      } catch (e) {
        showFieldErrors(e, Object.fromEntries(Object.entries(f).map(([k, v]) => [k, v.error])), box);
      }
    });
    fill(row, h('td', { colspan: 7, class: 'editing' }, form));
    url.focus();
  }

  function hookForm() {
    const box = errorBox();
    const url = h('input', { name: 'url', type: 'url', required: true, placeholder: 'https://example.net/hook' }) as HTMLInputElement;
    const min = h('select', { name: 'minSeverity' }, ['info', 'warning', 'critical'].map((s) => h('option', { value: s }, s))) as HTMLSelectElement;
    const secret = h('input', { name: 'secret', autocomplete: 'off', placeholder: 'empty: one is generated' }) as HTMLInputElement;
    const f = { url: field('URL', url), minSeverity: field('Min severity', min), secret: field('Signing secret', secret) };
    const shown = h('div', { 'aria-live': 'polite' });
    const form = h('form', { class: 'edit card', 'aria-label': 'New webhook' }, Object.values(f).map((x) => x.wrap), h('button', { type: 'submit' }, 'Add webhook'), box, shown);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      box.clear();
      Object.values(f).forEach((x) => (x.error.textContent = ''));
      try {
        const { createAlertWebhook: w } = await mutate<{ createAlertWebhook: Webhook & { secret: string | null } }>('CreateWebhook', { url: url.value.trim(), minSeverity: min.value, secret: secret.value || null });
        fill(shown, h('p', { class: 'secret card' }, 'Signing secret (shown only now): ', h('code', {}, w.secret ?? '')));
        url.value = ''; secret.value = '';
        void loadHooks();
      } catch (e) {
        showFieldErrors(e, Object.fromEntries(Object.entries(f).map(([k, v]) => [k, v.error])), box);
      }
    });
    fill(hookSlot, form);
  }

  hookForm();
  void loadRules();
  void loadHooks();
  return () => {};
}
