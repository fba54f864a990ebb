// Splits the console's .graphql files into operations, each with the
// fragments it uses appended: the text sent for it, and the text the test
// validates (test/validate-operations.mjs). Plain JavaScript, so that the
// test runs it in Node as the page runs it in the browser.

/**
 * @param {string[]} files the texts of the .graphql files
 * @returns {{ operations: Record<string, string>, fragments: Record<string, string> }}
 */
export function operations(files) {
  /** @type {Record<string, string>} */
  const ops = {};
  /** @type {Record<string, string>} */
  const frags = {};
  for (const file of files) {
    // Each definition starts at a line with its keyword and name.
    for (const part of file.split(/^(?=(?:query|mutation|subscription|fragment)\s)/m)) {
      const m = /^(query|mutation|subscription|fragment)\s+(\w+)/.exec(part);
      if (!m) continue;
      (m[1] === 'fragment' ? frags : ops)[m[2]] = part.replace(/^#.*$/gm, '').trim();
    }
  }
  for (const [name, text] of Object.entries(ops)) {
    const used = new Set();
    const queue = [text];
    while (queue.length) {
      for (const m of (queue.pop() ?? '').matchAll(/\.\.\.\s*([A-Za-z_]\w*)/g)) {
        if (m[1] !== 'on' && frags[m[1]] && !used.has(m[1])) {
          used.add(m[1]);
          queue.push(frags[m[1]]);
        }
      }
    }
    ops[name] = [text, ...[...used].map((f) => frags[f])].join('\n\n');
  }
  return { operations: ops, fragments: frags };
}
