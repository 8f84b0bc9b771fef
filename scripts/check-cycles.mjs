#!/usr/bin/env node
/**
 * The lint rule against import cycles (`npm run lint` runs it after eslint): every relative import
 * between the project's TypeScript files, `import type` included, as grpc-js's `madge -c` and
 * Temporal's `import/no-cycle` count them. A type-only cycle costs nothing at run time, but it
 * still ties two files into one concept that cannot be read, tested or moved apart; a value cycle
 * leaves one module's bindings undefined while the other initialises.
 *
 * Usage: `node scripts/check-cycles.mjs [DIR...]` (default: the project's source folders); exit 1
 * and one line per cycle (`a.ts -> b.ts -> a.ts`) when there is one.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_DIRS = ['common', 'coordinator', 'worker', 'bench', 'test', 'scripts'];
const IMPORT =
  /(?:^|[\s;])(?:import|export)\s+(?:type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"](\.{1,2}\/[^'"]+)['"]|import\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;

function sourceFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (name === 'node_modules' || name === 'dist' || name.startsWith('.')) continue;
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (/\.(ts|mts)$/.test(name) && !name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

/** Relative imports of `file` that name another file of `files` (`.js` in a specifier means the `.ts`). */
function importsOf(file, files) {
  const text = readFileSync(file, 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
  const found = new Set();
  for (const m of text.matchAll(IMPORT)) {
    const spec = m[1] ?? m[2];
    const base = resolve(dirname(file), spec);
    for (const candidate of [
      base.replace(/\.js$/, '.ts'),
      base.replace(/\.mjs$/, '.mts'),
      `${base}.ts`,
      join(base, 'index.ts'),
    ]) {
      if (files.has(candidate)) {
        found.add(candidate);
        break;
      }
    }
  }
  return [...found];
}

/**
 * The import cycles among the TypeScript files under `dirs`: one per strongly connected component
 * (Tarjan), each as the list of files along one cycle, paths relative to `root`.
 */
export function findCycles(dirs, root = ROOT) {
  const files = new Set(dirs.flatMap((d) => sourceFiles(resolve(root, d))));
  const graph = new Map([...files].map((f) => [f, importsOf(f, files)]));
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const components = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const comp = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || graph.get(v).includes(v)) components.push(comp);
    }
  };
  for (const f of [...files].sort()) if (!idx.has(f)) visit(f);
  return components.map((comp) => cycleWithin(new Set(comp), graph).map((f) => relative(root, f)));
}

/** One cycle through the component's first file (breadth-first, so the shortest one). */
function cycleWithin(comp, graph) {
  const start = [...comp].sort()[0];
  const prev = new Map([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift();
    for (const w of graph.get(v)) {
      if (!comp.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let u = v; u !== start; u = prev.get(u)) path.splice(1, 0, u);
        return [...path, start];
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dirs = process.argv.length > 2 ? process.argv.slice(2) : DEFAULT_DIRS;
  const cycles = findCycles(dirs, process.cwd());
  for (const c of cycles) console.error(`import cycle: ${c.join(' -> ')}`);
  process.exit(cycles.length > 0 ? 1 : 0);
}
