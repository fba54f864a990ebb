// The console's GraphQL operations, from the .graphql files beside this
// (checked against the committed schema by test/validate-operations.mjs).
import fleet from './graphql/fleet.graphql?raw';
import device from './graphql/device.graphql?raw';
import alerts from './graphql/alerts.graphql?raw';
import rules from './graphql/rules.graphql?raw';

const ops: Record<string, string> = {};
for (const file of [fleet, device, alerts, rules]) {
  // Each operation starts at a line with its keyword (the check above
  // makes sure), and none uses fragments: each part stands alone.
  for (const part of file.split(/^(?=(?:query|mutation|subscription)\s)/m)) {
    const m = /^(?:query|mutation|subscription)\s+(\w+)/.exec(part);
    if (m) ops[m[1]] = part.trim();
  }
}

/** The text of the named operation. */
export function op(name: string): string {
  const text = ops[name];
  if (!text) throw new Error(`the console has no operation ${name}`);
  return text;
}
