/**
 * scripts/gpu-check.sh cannot run here (no GPU): it is checked for syntax (`bash -n`), and what it
 * runs must exist: the built benchmarks' sources, the golden models and the paper models' configs,
 * all of which the GPU image ships.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helm-render.js';

const SCRIPT = join(ROOT, 'scripts/gpu-check.sh');

describe('scripts/gpu-check.sh', () => {
  it('is valid bash and executable', () => {
    const r = spawnSync('bash', ['-n', SCRIPT], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(statSync(SCRIPT).mode & 0o111).not.toBe(0);
  });

  it('runs what exists: the benchmarks it calls, the golden models, the configs of 7B and 13B', () => {
    const text = readFileSync(SCRIPT, 'utf8');
    for (const js of text.match(/dist\/bench\/[\w-]+\.js/g) ?? []) {
      expect(existsSync(join(ROOT, js.replace(/^dist\//, '').replace(/\.js$/, '.ts'))), js).toBe(true);
    }
    expect(text).toContain('dist/bench/golden-check.js --backend tensorflow');
    expect(text).toContain('dist/bench/memory.js --backend tensorflow');
    expect(text).toMatch(/NVIDIA_TF32_OVERRIDE=0/);
    for (const m of (/for model in ([^;]+);/.exec(text)?.[1] ?? '').split(/\s+/)) {
      expect(existsSync(join(ROOT, 'configs/models', m, 'config.json')), m).toBe(true);
    }
    expect(existsSync(join(ROOT, 'test/golden/llama-gqa/golden.json'))).toBe(true);
  });
});
