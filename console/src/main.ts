// The console: sign-in, the navigation and a page per hash route.
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { credentials, signIn, signOut, watchSocket, whenUnauthenticated, run, ApiError, type Credentials } from './api';
import { h, fill, field } from './dom';
import { errorBox } from './ui';
import { fleetPage } from './pages/fleet';
import { devicePage } from './pages/device';
import { alertsPage } from './pages/alerts';
import { rulesPage } from './pages/rules';
import { queryPage } from './pages/query';

/** A page draws into `main` and returns what stops its live updates. */
export type Page = (main: HTMLElement, arg: string) => () => void;

const app = document.getElementById('app') as HTMLElement;
let stop: () => void = () => {};

const routes: Record<string, Page> = {
  fleet: fleetPage,
  device: devicePage,
  alerts: alertsPage,
  rules: rulesPage,
  query: queryPage,
};

function route(): void {
  stop();
  stop = () => {};
  const [, name = 'fleet', ...rest] = location.hash.replace(/^#/, '').split('/');
  if (!credentials()) {
    signInPage(name === 'signin' ? 'fleet' : location.hash);
    return;
  }
  const page = routes[name] ?? fleetPage;
  const main = shell(name in routes ? name : 'fleet');
  stop = page(main, decodeURIComponent(rest.join('/')));
  main.querySelector('h1')?.focus({ preventScroll: true });
}

function shell(active: string): HTMLElement {
  const link = (name: string, label: string) =>
    h('a', { href: `#/${name}`, 'aria-current': active === name || (name === 'fleet' && active === 'device') ? 'page' : null }, label);
  const status = h('span', { class: 'socket', 'aria-live': 'polite', title: 'Live updates (WebSocket)' });
  const unwatch = watchSocket((s) => {
    status.className = `socket socket-${s.state}`;
    status.textContent = s.state === 'connected' ? 'live' : s.state === 'connecting' ? 'connecting…' : `live updates off${s.detail ? ` (${s.detail})` : ''}`;
  });
  const who = credentials();
  const main = h('main', { id: 'main', tabindex: '-1' });
  fill(
    app,
    h(
      'header',
      { class: 'top' },
      h('a', { class: 'brand', href: '#/fleet' }, 'IoT console'),
      h('nav', { 'aria-label': 'Pages' }, link('fleet', 'Fleet'), link('alerts', 'Alerts'), link('rules', 'Rules & webhooks'), link('query', 'Query')),
      h(
        'div',
        { class: 'who' },
        status,
        h('span', { class: 'muted' }, who?.kind === 'jwt' ? 'JWT' : 'API key'),
        h('button', { type: 'button', class: 'link', onclick: () => { unwatch(); signOut(); location.hash = '#/signin'; route(); } }, 'Sign out'),
      ),
    ),
    main,
  );
  const prev = stop;
  stop = () => { prev(); unwatch(); };
  return main;
}

function signInPage(next: string): void {
  const kind = h('select', { name: 'kind' }, h('option', { value: 'key' }, 'API key'), h('option', { value: 'jwt' }, 'JWT bearer token')) as HTMLSelectElement;
  const secret = h('input', { name: 'secret', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' }) as HTMLInputElement;
  const errors = errorBox();
  const kindField = field('Credential', kind);
  const secretField = field('Key or token', secret, 'Kept for this browser session only (sessionStorage).');
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'signin card', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    kindField.wrap, secretField.wrap, submit, errors);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errors.clear();
    submit.setAttribute('disabled', '');
    const c: Credentials = { kind: kind.value as Credentials['kind'], secret: secret.value.trim() };
    signIn(c);
    signingIn = true;
    try {
      // Any query proves the credentials; this one is small.
      await run('StatusSummary');
      location.hash = next && next !== '#/signin' && next !== '#' ? next : '#/fleet';
      route();
    } catch (e) {
      signOut();
      errors.show(e);
      if (e instanceof ApiError && e.status === 401) secretField.error.textContent = 'The gateway refused this credential.';
    } finally {
      signingIn = false;
      submit.removeAttribute('disabled');
    }
  });
  fill(app, h('main', { id: 'main', class: 'center' }, form));
  secret.focus();
}

let signingIn = false;
whenUnauthenticated(() => {
  if (credentials() && !signingIn) {
    signOut();
    route();
  }
});
// The skip link moves focus; as a hash link it would change the route.
document.querySelector('.skip')?.addEventListener('click', (ev) => {
  ev.preventDefault();
  document.getElementById('main')?.focus();
});
window.addEventListener('hashchange', route);
route();
