/**
 * The worker CLI from dist/ with and without the native products addon (worker/native, issue 18):
 * with it, no warning; hidden (a path with nothing there) or broken (not a shared object), one
 * warning line and the same output from the XNNPACK kernels; `--no-native` says nothing; a wrong
 * `--threads` is a usage error naming the flag.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addonPath, loadAddon } from '../../worker/native/addon.js';

const ROOT = resolve(import.meta.dirname, '../..');
const WORKER = join(ROOT, 'dist/worker/cli.js');
const WARNING = /native products unavailable, running the XNNPACK kernels/;
let dir: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function worker(args: string[], env: Record<string, string> = {}): Run {
  const base = { ...process.env };
  delete base['POLYTUNE_NATIVE'];
  delete base['POLYTUNE_NATIVE_ADDON'];
  const r = spawnSync(process.execPath, [WORKER, ...args], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...base, ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const generate = ['generate', '--model', 'tiny', '--prompt', 'Hello', '--max-new-tokens', '3', '--json'];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-native-'));
  const init = worker(['init-model', '--preset', 'tiny', '--out', 'tiny']);
  expect(init.code, init.stderr).toBe(0);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('worker with and without the native addon', () => {
  it('falls back with one warning line when the addon is hidden or broken, and computes the same', async () => {
    const plain = worker([...generate, '--no-native']);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stderr).not.toMatch(WARNING);
    const text = (JSON.parse(plain.stdout) as { text: string }).text;

    const hidden = worker(generate, { POLYTUNE_NATIVE_ADDON: join(dir, 'nothing-here.node') });
    expect(hidden.code, hidden.stderr).toBe(0);
    expect(hidden.stderr.split('\n').filter((l) => WARNING.test(l))).toEqual([
      expect.stringContaining(`${join(dir, 'nothing-here.node')} not found`),
    ]);
    expect((JSON.parse(hidden.stdout) as { text: string }).text).toBe(text);

    await writeFile(join(dir, 'broken.node'), 'not a shared object\n');
    const broken = worker([...generate, '--threads', '2'], { POLYTUNE_NATIVE_ADDON: join(dir, 'broken.node') });
    expect(broken.code, broken.stderr).toBe(0);
    expect(broken.stderr.split('\n').filter((l) => WARNING.test(l))).toEqual([
      expect.stringContaining('broken.node failed to load'),
    ]);
    expect((JSON.parse(broken.stdout) as { text: string }).text).toBe(text);
  });

  it.skipIf(!loadAddon(addonPath()).ok)('runs the OpenBLAS products without a word when the addon is built', () => {
    const native = worker([...generate, '--threads', '1']);
    expect(native.code, native.stderr).toBe(0);
    expect(native.stderr).not.toMatch(WARNING);
    const plain = worker(generate, { POLYTUNE_NATIVE: '0' });
    const text = (r: Run): string => (JSON.parse(r.stdout) as { text: string }).text;
    expect(text(native)).toBe(text(plain));
  });

  it('refuses a thread count below 1, naming the flag', () => {
    const r = worker([...generate, '--threads', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--threads: must be an integer >= 1/);
  });
});
