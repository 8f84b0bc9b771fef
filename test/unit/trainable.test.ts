import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { JobSpec } from '../../common/jobspec.js';
import { expectedTensorShapes, parseLlamaConfig } from '../../common/model-config.js';
import { describeTrainable, parameterCounts, trainableTensorNames } from '../../common/methods/index.js';

const config = (name: string) =>
  parseLlamaConfig(JSON.parse(readFileSync(new URL(`../fixtures/${name}/config.json`, import.meta.url), 'utf8')));
type Method = JobSpec['spec']['method'];
const slam: Method = { name: 'slam', layers: [0, 1, 2, 3, 4, 5], modules: ['up_proj', 'down_proj'] };

describe('what a method trains', () => {
  it('SLAM on MetaMath-7B trains 8.0% of the parameters, on MetaMath-13B 6.5% (SLAM paper)', () => {
    const c7 = parameterCounts(slam, config('metamath-7b'));
    expect(c7.trainable).toBe(6 * 2 * 4096 * 11008);
    expect(describeTrainable(c7)).toBe('541.1M of 6.74B parameters (8.0%)');
    const c13 = parameterCounts(slam, config('metamath-13b'));
    expect(c13.trainable).toBe(6 * 2 * 5120 * 13824);
    expect(describeTrainable(c13)).toBe('849.3M of 13.02B parameters (6.5%)');
    // layers: auto counts k layers (all layers have the same shapes).
    const auto = parameterCounts(
      { ...slam, layers: 'auto', analysis: { probe: [], k: 4, threshold: 0.5, maxSeqLen: 512, batchSize: 8 } },
      config('metamath-7b'),
    );
    expect(auto.trainable).toBe(4 * 2 * 4096 * 11008);
    // With gate_proj too it would be about 12% on 7B: not SLAM.
    const withGate = parameterCounts(
      { ...slam, modules: ['gate_proj', 'up_proj', 'down_proj'] },
      config('metamath-7b'),
    );
    expect((100 * withGate.trainable) / withGate.total).toBeCloseTo(12.0, 0);
  });

  it('freeze tuning takes any layers and modules, whole blocks included', () => {
    const names = [...expectedTensorShapes(config('metamath-7b')).keys()];
    const mid = trainableTensorNames({ name: 'freeze', layers: [15, 16], modules: ['self_attn'] }, 32, names);
    expect(mid).toEqual(
      [15, 16].flatMap((l) =>
        ['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((m) => `model.layers.${l}.self_attn.${m}.weight`),
      ),
    );
    const mlp = trainableTensorNames({ name: 'freeze', layers: [31], modules: ['mlp', 'input_layernorm'] }, 32, names);
    expect(mlp.sort()).toEqual([
      'model.layers.31.input_layernorm.weight',
      'model.layers.31.mlp.down_proj.weight',
      'model.layers.31.mlp.gate_proj.weight',
      'model.layers.31.mlp.up_proj.weight',
    ]);
    const all = trainableTensorNames({ name: 'freeze', layers: [3] }, 32, names);
    expect(all).toHaveLength(9);
    expect(trainableTensorNames({ name: 'full' }, 32, names)).toEqual(names);
  });
});
