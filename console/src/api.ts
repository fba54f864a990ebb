// The public GraphQL API: queries and mutations over HTTP (POST /graphql),
// subscriptions over graphql-transport-ws (graphql-ws). The credentials
// live in sessionStorage: gone when the browser session ends.
import { createClient, type Client } from 'graphql-ws';
import { op } from './ops';

export type Credentials = { kind: 'key' | 'jwt'; secret: string };

export interface GqlError {
  message: string;
  path?: (string | number)[];
  extensions?: {
    code?: string;
    service?: string;
    fields?: { field: string; message: string }[];
    [k: string]: unknown;
  };
}

/** A request that failed as a whole (no data): the API's errors, or the
 * transport's failure as one error. */
export class ApiError extends Error {
  constructor(
    public errors: GqlError[],
    public status = 0,
  ) {
    super(errors.map(describe).join('; '));
  }
}

const STORE = 'iot-console-credentials';

export function credentials(): Credentials | null {
  try {
    const v = JSON.parse(sessionStorage.getItem(STORE) ?? 'null');
    return v && (v.kind === 'key' || v.kind === 'jwt') && typeof v.secret === 'string' ? v : null;
  } catch {
    return null;
  }
}

export function signIn(c: Credentials): void {
  sessionStorage.setItem(STORE, JSON.stringify(c));
  resetSocket();
}

export function signOut(): void {
  sessionStorage.removeItem(STORE);
  resetSocket();
}

/** One line a person can act on: the message, which backend, the code. */
export function describe(e: GqlError): string {
  const x = e.extensions ?? {};
  const where = e.path?.length ? ` (at ${e.path.join('.')})` : '';
  const svc = x.service && !e.message.includes(x.service) ? ` — ${x.service}` : '';
  return `${e.message}${svc}${where}${x.code ? ` [${x.code}]` : ''}`;
}

function authHeaders(): Record<string, string> {
  const c = credentials();
  if (!c) return {};
  return c.kind === 'key' ? { 'X-Api-Key': c.secret } : { Authorization: `Bearer ${c.secret}` };
}

/** Listeners told when the API refuses the credentials. */
const onUnauthenticated: (() => void)[] = [];
export function whenUnauthenticated(f: () => void): void {
  onUnauthenticated.push(f);
}

/** Runs the named operation; its data and any errors beside it (a field
 * whose backend is down comes back null with an error). Throws an
 * [`ApiError`] when there is no data at all. */
export async function run<T>(name: string, variables: Record<string, unknown> = {}): Promise<{ data: T; errors: GqlError[] }> {
  return runText<T>(op(name), variables, name);
}

/** As [`run`], for any query text (the query page). */
export async function runText<T>(
  query: string,
  variables: Record<string, unknown> = {},
  operationName?: string,
): Promise<{ data: T; errors: GqlError[] }> {
  let res: Response;
  try {
    res = await fetch('/graphql', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders() },
      body: JSON.stringify({ query, variables, operationName }),
    });
  } catch (e) {
    throw new ApiError([{ message: `cannot reach the gateway: ${(e as Error).message}`, extensions: { code: 'NETWORK' } }]);
  }
  let body: { data?: T | null; errors?: GqlError[] } = {};
  try {
    body = await res.json();
  } catch {
    throw new ApiError([{ message: `the gateway answered ${res.status} ${res.statusText} without GraphQL`, extensions: { code: `HTTP_${res.status}` } }], res.status);
  }
  const errors = body.errors ?? [];
  if (res.status === 401) onUnauthenticated.forEach((f) => f());
  if (body.data === null || body.data === undefined) {
    throw new ApiError(errors.length ? errors : [{ message: `HTTP ${res.status} with no data` }], res.status);
  }
  return { data: body.data, errors };
}

/** As [`run`] for a mutation: any error fails it. */
export async function mutate<T>(name: string, variables: Record<string, unknown>): Promise<T> {
  const { data, errors } = await run<T>(name, variables);
  if (errors.length) throw new ApiError(errors);
  return data;
}

export type SocketState = { state: 'connecting' | 'connected' | 'closed'; detail?: string };
const socketListeners = new Set<(s: SocketState) => void>();
let socketState: SocketState = { state: 'closed', detail: 'not connected yet' };

export function watchSocket(f: (s: SocketState) => void): () => void {
  socketListeners.add(f);
  f(socketState);
  return () => socketListeners.delete(f);
}

function setSocket(s: SocketState): void {
  socketState = s;
  socketListeners.forEach((f) => f(s));
}

let client: Client | null = null;

function socket(): Client {
  if (client) return client;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`;
  client = createClient({
    url,
    lazy: true,
    lazyCloseTimeout: 1000,
    connectionParams: () => {
      const c = credentials();
      if (!c) return {};
      return c.kind === 'key' ? { apiKey: c.secret } : { Authorization: `Bearer ${c.secret}` };
    },
    // Keeps trying while the gateway is away; each attempt shows.
    retryAttempts: Infinity,
    shouldRetry: () => true,
    on: {
      connecting: () => setSocket({ state: 'connecting' }),
      connected: () => setSocket({ state: 'connected' }),
      closed: (e) => {
        const ev = e as CloseEvent | undefined;
        const detail = ev && 'code' in ev ? `closed ${ev.code}${ev.reason ? `: ${ev.reason}` : ''}` : 'closed';
        setSocket({ state: 'closed', detail });
      },
    },
  });
  return client;
}

function resetSocket(): void {
  client?.dispose();
  client = null;
}

/** Subscribes to the named subscription; `next` gets each value, `fail`
 * each error (the stream may go on: a backend away is an error in it).
 * Returns the unsubscribe function. */
export function subscribe<T>(
  name: string,
  variables: Record<string, unknown>,
  next: (v: T) => void,
  fail: (errors: GqlError[]) => void,
): () => void {
  return subscribeText<T>(op(name), variables, next, fail);
}

export function subscribeText<T>(
  query: string,
  variables: Record<string, unknown>,
  next: (v: T) => void,
  fail: (errors: GqlError[]) => void,
  done?: () => void,
): () => void {
  return socket().subscribe<T>(
    { query, variables },
    {
      next: (r) => {
        if (r.errors?.length) fail(r.errors as GqlError[]);
        if (r.data) next(r.data as T);
      },
      error: (e) => {
        if (Array.isArray(e)) fail(e as GqlError[]);
        else if (e instanceof Error) fail([{ message: e.message }]);
        else if (e && typeof e === 'object' && 'code' in e) {
          const c = e as CloseEvent;
          fail([{ message: `live updates stopped: socket closed ${c.code}${c.reason ? ` (${c.reason})` : ''}` }]);
        } else fail([{ message: 'live updates stopped' }]);
      },
      complete: () => done?.(),
    },
  );
}
