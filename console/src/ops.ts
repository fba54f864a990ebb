// The console's GraphQL operations, from the .graphql files beside this
// (each checked against the committed schema, as sent, by
// test/validate-operations.mjs).
import fragments from './graphql/fragments.graphql?raw';
import fleet from './graphql/fleet.graphql?raw';
import device from './graphql/device.graphql?raw';
import alerts from './graphql/alerts.graphql?raw';
import rules from './graphql/rules.graphql?raw';
import commands from './graphql/commands.graphql?raw';
import { operations } from './operations.js';

const ops = operations([fragments, fleet, device, alerts, rules, commands]).operations;

/** The text of the named operation, with the fragments it uses. */
export function op(name: string): string {
  const text = ops[name];
  if (!text) throw new Error(`the console has no operation ${name}`);
  return text;
}
