/**
 * The lint rule against import cycles (scripts/check-cycles.mjs, run by `npm run lint`): it finds a
 * value cycle and a type-only cycle in a fixture written here, passes a tree without one, and the
 * project itself has none.
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { findCycles as find } from '../../scripts/check-cycles.mjs';

const ROOT = resolve(import.meta.dirname, '../..');
let dir: string | undefined;

function tree(files: Record<string, string>): string {
  dir = mkdtempSync(join(tmpdir(), 'polytune-cycles-'));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('check-cycles', () => {
  it('reports a cycle through three files, naming them in order', () => {
    const root = tree({
      'src/a.ts': "import { b } from './b.js';\nexport const a = b + 1;\n",
      'src/b.ts': "import {\n  c,\n} from './sub/c.js';\nexport const b = c;\n",
      'src/sub/c.ts': "export { a as c } from '../a.js';\n",
      'src/d.ts': "import { a } from './a.js';\nexport const d = a;\n",
    });
    expect(find(['src'], root)).toEqual([['src/a.ts', 'src/b.ts', 'src/sub/c.ts', 'src/a.ts']]);
  });

  it('counts a type-only cycle and a dynamic import', () => {
    const root = tree({
      'src/x.ts': "import type { Y } from './y.js';\nexport interface X { y?: Y }\n",
      'src/y.ts': "export interface Y { n: number }\nexport const load = () => import('./x.js');\n",
    });
    expect(find(['src'], root)).toEqual([['src/x.ts', 'src/y.ts', 'src/x.ts']]);
  });

  it('passes a tree without a cycle, and ignores imports inside comments', () => {
    const root = tree({
      'src/a.ts': "// import { b } from './b.js';\nimport { c } from './c.js';\nexport const a = c;\n",
      'src/b.ts': "/* import { a } from './a.js'; */\nimport { a } from 'node:path';\nexport const b = a;\n",
      'src/c.ts': 'export const c = 1;\n',
    });
    expect(find(['src'], root)).toEqual([]);
  });

  it('finds none in the project', () => {
    expect(find(['common', 'coordinator', 'worker', 'bench', 'test', 'scripts'], ROOT)).toEqual([]);
  });
});
