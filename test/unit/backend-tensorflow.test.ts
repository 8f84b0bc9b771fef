/**
 * `--backend tensorflow` without tfjs-node (which cannot be installed here): the loader resolves
 * the package from a directory (`resolveFrom`, `POLYTUNE_TFJS_NODE_DIR`), so these tests give it
 * none, or a fake `@tensorflow/tfjs-node-gpu` that registers a `tensorflow` backend (the cpu one
 * under that name) reporting whether it is on a GPU, as tfjs-node's NodeJSKernelBackend does.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GpuNotFoundError, UserError } from '../../common/errors.js';
import { checkTf32, loadTensorflowBackend, TF32_ENV } from '../../worker/backend-tensorflow.js';

const ROOT = resolve(import.meta.dirname, '../..');
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A directory whose node_modules holds a fake tfjs-node-gpu that sees a GPU or not. */
function fakeTfjsNode(onGpu: boolean): string {
  const dir = mkdtempSync(join(tmpdir(), 'polytune-fake-tfjs-node-'));
  dirs.push(dir);
  const scope = join(dir, 'node_modules', '@tensorflow');
  mkdirSync(join(scope, 'tfjs-node-gpu'), { recursive: true });
  // The same tfjs-core instance as the worker's (symlinks resolve to the real path).
  for (const p of ['tfjs-core', 'tfjs-backend-cpu'])
    symlinkSync(join(ROOT, 'node_modules', '@tensorflow', p), join(scope, p));
  writeFileSync(
    join(scope, 'tfjs-node-gpu', 'package.json'),
    JSON.stringify({ name: '@tensorflow/tfjs-node-gpu', version: '4.22.0-fake', type: 'module', main: 'index.js' }),
  );
  writeFileSync(
    join(scope, 'tfjs-node-gpu', 'index.js'),
    `
import * as tf from '@tensorflow/tfjs-core';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
// What TensorFlow would have read when it created its devices.
globalThis.fakeTf32AtLoad = process.env.NVIDIA_TF32_OVERRIDE;
class FakeNodeBackend extends MathBackendCPU {
  isUsingGpuDevice = ${onGpu};
  isGPUPackage = true;
}
if (tf.findBackendFactory('tensorflow')) tf.removeBackend('tensorflow');
tf.registerBackend('tensorflow', () => new FakeNodeBackend(), 3);
`,
  );
  return dir;
}

const oneLine = (e: unknown): string => {
  expect(e).toBeInstanceOf(UserError);
  const msg = (e as Error).message;
  expect(msg).not.toContain('\n');
  return msg;
};

describe('backend tensorflow', () => {
  it('without the package: one line naming both packages and what to do', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'polytune-no-tfjs-node-'));
    dirs.push(empty);
    const msg = oneLine(await loadTensorflowBackend({ resolveFrom: empty }).catch((e: unknown) => e));
    expect(msg).toMatch(
      /^backend tensorflow: neither @tensorflow\/tfjs-node-gpu nor @tensorflow\/tfjs-node is installed/,
    );
    expect(msg).toContain('--backend wasm');
  });

  it('a package that sees no GPU: refused in one line saying what it found, unless allowCpu', async () => {
    const dir = fakeTfjsNode(false);
    const err = await loadTensorflowBackend({ resolveFrom: dir }).catch((e: unknown) => e);
    const msg = oneLine(err);
    expect(err).toBeInstanceOf(GpuNotFoundError);
    expect(msg).toMatch(
      /^backend tensorflow: TensorFlow found no GPU \(@tensorflow\/tfjs-node-gpu@4\.22\.0-fake, the GPU build; CUDA_VISIBLE_DEVICES=/,
    );
    expect(msg).toContain('--allow-cpu');
    expect((err as GpuNotFoundError).package).toBe('@tensorflow/tfjs-node-gpu@4.22.0-fake');
    const info = await loadTensorflowBackend({ resolveFrom: dir, allowCpu: true });
    expect(info).toMatchObject({ backend: 'tensorflow', device: 'cpu', tf32: 'n/a' });
    // TF32 on a CPU means nothing: any spec runs.
    expect(() => checkTf32(info, true)).not.toThrow();
  });

  it(
    'on a GPU: NVIDIA_TF32_OVERRIDE is set before TensorFlow ' + 'loads, and a job asking otherwise is refused',
    async () => {
      const info = await loadTensorflowBackend({ resolveFrom: fakeTfjsNode(true), tf32: true });
      expect((globalThis as { fakeTf32AtLoad?: string }).fakeTf32AtLoad).toBe('1');
      expect(process.env[TF32_ENV]).toBe('1');
      expect(info).toMatchObject({
        backend: 'tensorflow',
        device: 'gpu',
        tf32: 'on',
        package: '@tensorflow/tfjs-node-gpu@4.22.0-fake',
      });
      expect(() => checkTf32(info, true)).not.toThrow();
      expect(() => checkTf32(info, false)).toThrow(/spec\.training\.tf32 is false but this worker runs with TF32 on/);
      const off = await loadTensorflowBackend({ resolveFrom: fakeTfjsNode(true) });
      expect((globalThis as { fakeTf32AtLoad?: string }).fakeTf32AtLoad).toBe('0');
      expect(off.tf32).toBe('off');
    },
  );

  it('the built worker refuses to start on a package that sees no GPU, with one error line (exit 2)', () => {
    const r = spawnSync(
      process.execPath,
      [
        join(ROOT, 'dist/worker/cli.js'),
        '--backend',
        'tensorflow',
        '--coordinator',
        '127.0.0.1:1',
        '--metrics-port',
        '0',
      ],
      {
        encoding: 'utf8',
        env: { ...process.env, POLYTUNE_TFJS_NODE_DIR: fakeTfjsNode(false) },
        timeout: 60_000,
      },
    );
    expect(r.status).toBe(2);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^error: backend tensorflow: TensorFlow found no GPU \(.*\); .*--allow-cpu/);
  });
});
