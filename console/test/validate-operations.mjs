// Checks every operation of the console (src/graphql/*.graphql), as the
// page sends it (src/operations.js appends the fragments it uses), against
// the committed schema (crates/graphql-gateway/schema.graphql, itself
// checked against the gateway's code by its tests): a schema change that
// breaks the console fails here.
import { readFileSync, readdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSchema, parse, validate, Kind } from 'graphql';
import { operations } from '../src/operations.js';

const here = dirname(fileURLToPath(import.meta.url));
// CONSOLE_SCHEMA: another schema to check against (a change under review).
const schemaPath = process.env.CONSOLE_SCHEMA ?? join(here, '../../crates/graphql-gateway/schema.graphql');
const schema = buildSchema(readFileSync(schemaPath, 'utf8'));
const dir = join(here, '../src/graphql');
const files = readdirSync(dir).filter((f) => f.endsWith('.graphql')).sort();
const problems = [];
let definitions = 0;
for (const file of files) {
  // Each file parses, and holds only named definitions that start at a
  // line of their own (what src/operations.js splits on).
  const text = readFileSync(join(dir, file), 'utf8');
  try {
    const doc = parse(text);
    definitions += doc.definitions.length;
    for (const def of doc.definitions) {
      if (def.kind !== Kind.OPERATION_DEFINITION && def.kind !== Kind.FRAGMENT_DEFINITION) problems.push(`${file}: a ${def.kind}`);
      else if (!def.name) problems.push(`${file}: an operation without a name`);
    }
    const starts = text.match(/^(query|mutation|subscription|fragment)\s+\w+/gm) ?? [];
    if (starts.length !== doc.definitions.length) problems.push(`${file}: each definition must start at column 0 with its keyword and name`);
  } catch (e) {
    problems.push(`${file}: ${e.message}`);
  }
}
const { operations: ops, fragments } = operations(files.map((f) => readFileSync(join(dir, f), 'utf8')));
if (Object.keys(ops).length + Object.keys(fragments).length !== definitions) problems.push('a name is defined twice');
const usedFragments = new Set();
for (const [name, text] of Object.entries(ops)) {
  let doc;
  try {
    doc = parse(text);
  } catch (e) {
    problems.push(`${name}: ${e.message}`);
    continue;
  }
  for (const d of doc.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) usedFragments.add(d.name.value);
  for (const e of validate(schema, doc)) {
    const at = e.locations?.map((l) => `${l.line}:${l.column}`).join(', ') ?? '';
    problems.push(`${name} (${at}): ${e.message}`);
  }
}
for (const f of Object.keys(fragments)) if (!usedFragments.has(f)) problems.push(`fragment ${f} is used by no operation`);
if (problems.length) {
  console.error(`console operations do not fit ${schemaPath}:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`${Object.keys(ops).length} console operations valid against schema.graphql`);
