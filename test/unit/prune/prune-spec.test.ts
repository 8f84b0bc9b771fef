/**
 * A PruneJob's spec at submit: what the schema, the rules across fields and the checks against the
 * files refuse, each at its field path; and the calibration samples a spec makes.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobSpecError } from '../../../common/errors.js';
import { parseAnyJobSpec, validateAnyJobSpecFiles } from '../../../common/job-kinds.js';
import { samplesPerSource } from '../../../common/prune-spec.js';
import { demonstrationText, languageName } from '../../../worker/prune/calibration.js';

const MODEL = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa');
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-prune-spec-'));
  await writeFile(join(dir, 'src.sw'), 'a\nb\nc\n');
  await writeFile(join(dir, 'tgt.en'), 'A\nB\nC\n');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function text(prune: string): string {
  return `apiVersion: polytune/v1
kind: PruneJob
metadata: { name: p }
spec:
  model: { path: ${MODEL} }
  prune:
${prune
  .split('\n')
  .map((l) => `    ${l}`)
  .join('\n')}
  workers: { count: 1 }
  output: { dir: out }
`;
}
const SOURCES = `sources: [{ path: src.sw, target: tgt.en, format: parallel, language: sw }]`;

/** Every issue of parsing and of the file checks, as `path: message`. */
async function issues(prune: string): Promise<string[]> {
  try {
    const spec = parseAnyJobSpec(text(prune), { baseDir: dir });
    await validateAnyJobSpecFiles(spec);
    return [];
  } catch (e) {
    expect(e).toBeInstanceOf(JobSpecError);
    return (e as JobSpecError).issues.map((i) => `${i.path}: ${i.message}`);
  }
}

describe('PruneJob spec', () => {
  it('accepts a good spec, with the defaults of the paper', async () => {
    expect(await issues(`calibration: { ${SOURCES}, samples: 1, shots: 3 }`)).toEqual([]);
    const spec = parseAnyJobSpec(text(`calibration: { ${SOURCES}, samples: 1, shots: 3 }`), { baseDir: dir });
    expect(spec.kind).toBe('PruneJob');
    if (spec.kind !== 'PruneJob') return;
    expect(spec.spec.prune.modules).toHaveLength(7);
    expect(spec.spec.prune.features.topK).toBe(20);
    expect(spec.spec.prune.calibration.sources[0]!.path).toBe(join(dir, 'src.sw'));
    expect(spec.spec.prune.calibration.sources[0]!.target).toBe(join(dir, 'tgt.en'));
  });

  it('refuses sparsity outside [0, 1), both sparsity and pattern, and N >= M', async () => {
    for (const s of ['1', '1.5', '-0.1'])
      expect(await issues(`sparsity: ${s}\ncalibration: { ${SOURCES}, samples: 1, shots: 3 }`)).toEqual([
        'spec.prune.sparsity: must be in [0, 1)',
      ]);
    expect(await issues(`sparsity: 0.5\npattern: "2:4"\ncalibration: { ${SOURCES}, samples: 1 }`)).toEqual([
      'spec.prune.pattern: give either sparsity or pattern, not both',
    ]);
    expect(await issues(`pattern: "4:4"\ncalibration: { ${SOURCES}, samples: 1 }`)).toEqual([
      'spec.prune.pattern: N must be < M (it zeroes N of every M inputs), got 4:4',
    ]);
    expect(await issues(`pattern: "2-4"\ncalibration: { ${SOURCES}, samples: 1 }`)).toEqual([
      'spec.prune.pattern: must be "N:M" such as "2:4"',
    ]);
  });

  it('refuses a pattern that does not divide the columns, and layers past the depth', async () => {
    // llama-gqa: hidden 32, intermediate 64.
    expect(await issues(`pattern: "2:3"\ncalibration: { ${SOURCES}, samples: 1, shots: 3 }`)).toEqual(
      ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj']
        .map((m) => `spec.prune.pattern: 2:3 does not divide ${m}'s 32 input columns`)
        .concat(["spec.prune.pattern: 2:3 does not divide down_proj's 64 input columns"]),
    );
    expect(await issues(`pattern: "4:8"\nlayers: [1, 2]\ncalibration: { ${SOURCES}, samples: 1, shots: 3 }`)).toEqual([
      'spec.prune.layers[1]: layer 2 does not exist (the model has 2)',
    ]);
  });

  it('refuses calibration files without a target, and fewer pairs than the samples need', async () => {
    expect(
      await issues('calibration: { sources: [{ path: src.sw, format: parallel, language: sw }], samples: 1 }'),
    ).toEqual([
      'spec.prune.calibration.sources[0].target: is required for format parallel (the line-aligned target file)',
    ]);
    expect(await issues(`calibration: { ${SOURCES}, samples: 2, shots: 2 }`)).toEqual([
      'spec.prune.calibration.samples: needs 4 pairs (2 samples x 2 shots) from sources[0], which has 3',
    ]);
    expect(
      await issues(
        `calibration: { ${SOURCES}, samples: 1, shots: 3 }\n` +
          'contrast: { sources: [{ path: nope.jsonl, format: tokenized }], samples: 1 }',
      ),
    ).toEqual([`spec.prune.contrast.sources[0].path: ${join(dir, 'nope.jsonl')}: no such file`]);
    expect(await issues('calibration: { sources: [{ path: src.sw, format: tokenized, target: tgt.en }] }')).toEqual([
      'spec.prune.calibration.sources[0].target: is only allowed for format parallel',
    ]);
  });

  it("takes the contrast set's samples, shots and maxSeqLen from calibration unless given", async () => {
    await writeFile(join(dir, 'other.de'), 'x\ny\n');
    await writeFile(join(dir, 'other.en'), 'X\nY\n');
    const OTHER = '{ path: other.de, target: other.en, format: parallel, language: de }';
    const contrastOf = (prune: string): unknown => {
      const spec = parseAnyJobSpec(text(prune), { baseDir: dir });
      return spec.kind === 'PruneJob' ? spec.spec.prune.contrast : undefined;
    };
    const calibration = `calibration: { ${SOURCES}, samples: 1, shots: 2, maxSeqLen: 64 }`;
    expect(contrastOf(`${calibration}\ncontrast: { sources: [${OTHER}] }`)).toEqual({
      sources: [expect.objectContaining({ path: join(dir, 'other.de') })],
      samples: 1,
      shots: 2,
      maxSeqLen: 64,
    });
    expect(contrastOf(`${calibration}\ncontrast: { sources: [${OTHER}], samples: 2, shots: 1 }`)).toMatchObject({
      samples: 2,
      shots: 1,
      maxSeqLen: 64,
    });
    expect(contrastOf(calibration)).toBeUndefined();
    // The inherited numbers are checked against the contrast files like given ones.
    expect(
      await issues(`calibration: { ${SOURCES}, samples: 1, shots: 3 }\ncontrast: { sources: [${OTHER}] }`),
    ).toEqual(['spec.prune.contrast.samples: needs 3 pairs (1 samples x 3 shots) from sources[0], which has 2']);
    // A parsed spec parses again to itself (the worker parses what the coordinator stored).
    const once = parseAnyJobSpec(text(`${calibration}\ncontrast: { sources: [${OTHER}] }`), { baseDir: dir });
    expect(parseAnyJobSpec(JSON.stringify(once), { baseDir: dir })).toEqual(once);
  });

  it('splits the samples over the sources and writes demonstrations as the authors do', () => {
    const c = { sources: [{}, {}, {}], samples: 7, shots: 4, maxSeqLen: 8 } as never;
    expect(samplesPerSource(c)).toEqual([3, 2, 2]);
    expect(languageName('sw')).toBe('Swahili');
    expect(
      demonstrationText(
        [
          { src: 'a', tgt: 'A' },
          { src: 'b', tgt: 'B' },
        ],
        'sw',
        'en',
        '</s>',
      ),
    ).toBe('Swahili: a</s>English: A</s>Swahili: b</s>English: B</s>');
  });
});
