/** Every spec people start from parses; the paper configs say what the SLAM paper says. */
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec } from '../../common/jobspec.js';

const CONFIGS = resolve(import.meta.dirname, '../../configs');

describe('configs/', () => {
  it.each(readdirSync(CONFIGS).filter((f) => f.endsWith('.yaml')))('%s parses', (file) => {
    expect(() => parseAnyJobSpec(readFileSync(join(CONFIGS, file), 'utf8'), { source: file, baseDir: CONFIGS })).not.toThrow();
  });

  it.each(['slam-metamath-7b.yaml', 'slam-metamath-13b.yaml'])('%s has the SLAM paper settings', (file) => {
    const s = parseJobSpec(readFileSync(join(CONFIGS, file), 'utf8'), { baseDir: CONFIGS }).spec;
    expect(s.method).toEqual({ name: 'slam', layers: [0, 1, 2, 3, 4, 5], modules: ['up_proj', 'down_proj'] });
    expect(s.training).toMatchObject({ epochs: 4, globalBatchSize: 512, optimizer: { name: 'adamw', lr: 2e-5 }, schedule: { name: 'cosine' } });
    expect(s.data.maxSeqLen).toBe(1024);
    expect(s.data.template).toBe('slam');
    expect(new Set(s.data.train.map((d) => d.language))).toEqual(new Set(['bn', 'th', 'sw', 'ja', 'zh', 'de', 'fr', 'ru', 'es', 'en']));
  });
});
