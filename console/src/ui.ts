// Pieces every page uses: the error box, field errors, status badges.
import { ApiError, describe, type GqlError } from './api';
import { h, fill } from './dom';

/** A box that lists failures; empty and hidden while there are none. */
export function errorBox(): HTMLElement & { show: (e: unknown) => void; clear: () => void } {
  const box = h('div', { class: 'errors', role: 'alert', hidden: true }) as unknown as HTMLElement & {
    show: (e: unknown) => void;
    clear: () => void;
  };
  box.show = (e: unknown) => {
    const errors = toErrors(e);
    if (!errors.length) return;
    box.hidden = false;
    fill(box, h('ul', {}, errors.map((x) => h('li', { 'data-code': x.extensions?.code ?? '' }, describe(x)))));
  };
  box.clear = () => {
    box.hidden = true;
    box.replaceChildren();
  };
  return box;
}

export function toErrors(e: unknown): GqlError[] {
  if (e instanceof ApiError) return e.errors;
  if (Array.isArray(e)) return e as GqlError[];
  if (e instanceof Error) return [{ message: e.message }];
  return [{ message: String(e) }];
}

/** Puts each error the API gives for a field (`extensions.fields`, or a
 * field named at the start of a BAD_USER_INPUT message) next to that
 * field; what matches no field goes to `rest`. */
export function showFieldErrors(
  e: unknown,
  fields: Record<string, HTMLElement>,
  rest: { show: (e: unknown) => void },
): void {
  const norm = (s: string) => s.toLowerCase().replace(/[^a-z]/g, '');
  const byName = new Map(Object.entries(fields).map(([k, el]) => [norm(k), el]));
  const unplaced: GqlError[] = [];
  for (const err of toErrors(e)) {
    const listed = err.extensions?.fields ?? [];
    let placed = false;
    for (const f of listed) {
      const el = byName.get(norm(f.field.split('.').pop() ?? f.field));
      if (el) {
        el.textContent = f.message;
        placed = true;
      }
    }
    if (!placed) {
      const m = /^(?:rule\.)?([a-zA-Z_]+)\s*:\s*(.+)$/s.exec(err.message);
      const el = m ? byName.get(norm(m[1])) : undefined;
      if (el && m) {
        el.textContent = m[2];
        placed = true;
      }
    }
    if (!placed) unplaced.push(err);
  }
  if (unplaced.length) rest.show(unplaced);
}

export function badge(text: string, kind = text): HTMLElement {
  return h('span', { class: `badge badge-${kind.replace(/[^a-z_]/gi, '')}` }, text);
}

export function onlineBadge(online: boolean): HTMLElement {
  return badge(online ? 'online' : 'offline', online ? 'online' : 'offline');
}

/** A page's heading and the place its failures show. */
export function pageHead(title: string, ...extra: Node[]): HTMLElement {
  return h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title), ...extra);
}
