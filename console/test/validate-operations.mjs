// Checks every operation of the console (src/graphql/*.graphql) against
// the committed schema (crates/graphql-gateway/schema.graphql, itself
// checked against the gateway's code by its tests): a schema change that
// breaks the console fails here. Also checks what src/ops.ts relies on to
// split the files: named operations, unique names, no fragments.
import { readFileSync, readdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSchema, parse, validate, Kind } from 'graphql';

const here = dirname(fileURLToPath(import.meta.url));
const schemaPath = join(here, '../../crates/graphql-gateway/schema.graphql');
const schema = buildSchema(readFileSync(schemaPath, 'utf8'));
const dir = join(here, '../src/graphql');
const problems = [];
const names = new Set();
let count = 0;
for (const file of readdirSync(dir).filter((f) => f.endsWith('.graphql')).sort()) {
  const text = readFileSync(join(dir, file), 'utf8');
  let doc;
  try {
    doc = parse(text);
  } catch (e) {
    problems.push(`${file}: ${e.message}`);
    continue;
  }
  for (const e of validate(schema, doc)) {
    const at = e.locations?.map((l) => `${l.line}:${l.column}`).join(', ') ?? '';
    problems.push(`${file}:${at}: ${e.message}`);
  }
  for (const def of doc.definitions) {
    if (def.kind !== Kind.OPERATION_DEFINITION) {
      problems.push(`${file}: only operations, no ${def.kind} (src/ops.ts splits on operations)`);
      continue;
    }
    const name = def.name?.value;
    if (!name) problems.push(`${file}: an operation without a name`);
    else if (names.has(name)) problems.push(`${file}: ${name} is defined twice`);
    else names.add(name);
    count += 1;
  }
  // src/ops.ts finds operations by their keyword at the start of a line.
  const starts = text.match(/^(query|mutation|subscription)\s+\w+/gm) ?? [];
  if (starts.length !== doc.definitions.length) {
    problems.push(`${file}: each operation must start at column 0 with its keyword and name`);
  }
}
if (problems.length) {
  console.error(`console operations do not fit ${schemaPath}:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`${count} console operations valid against schema.graphql`);
