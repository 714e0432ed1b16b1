// Parse and validate an AsyncAPI document with the official parser (@asyncapi/parser):
// the document against the AsyncAPI JSON Schema of its version, every $ref (files
// included), the payload and header schemas, and the parser's own rules.
// Prints one JSON line per diagnostic; exits 1 when any is an error or a warning.
// Usage: node tests/asyncapi/validate.cjs docs/asyncapi.yaml
const { Parser, fromFile } = require('@asyncapi/parser');

const SEVERITY = ['error', 'warning', 'information', 'hint'];

async function main(path) {
  const { document, diagnostics } = await fromFile(new Parser(), path).parse();
  let failed = !document;
  for (const d of diagnostics) {
    const severity = SEVERITY[d.severity] || String(d.severity);
    failed = failed || d.severity <= 1;
    console.log(JSON.stringify({ severity, code: d.code, message: d.message, path: d.path }));
  }
  if (document) console.log(JSON.stringify({ parsed: document.version() }));
  process.exit(failed ? 1 : 0);
}

main(process.argv[2]).catch((error) => {
  console.error(error);
  process.exit(2);
});
