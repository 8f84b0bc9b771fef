/**
 * CC-Tuning's Decision Maker choices on their way to the status: the coordinator's check of a
 * progress report's `layer_choices` (coordinator/request-limits.ts) and their summary lines
 * (coordinator/views/job-view.ts `layerChoiceLines`), and the worker's counter of them.
 */
import { describe, expect, it } from 'vitest';
import { PromMeter } from '../../common/metrics.js';
import { checkProgress } from '../../coordinator/request-limits.js';
import { layerChoiceLines } from '../../coordinator/views/job-view.js';
import type { Progress__Output } from '../../proto/index.js';
import { createWorkerMetrics } from '../../worker/worker-metrics.js';

const progress = (layerChoices: Record<string, { counts: number[] }>): Progress__Output =>
  ({
    jobId: 'cc-12345',
    generation: 1,
    step: 2,
    totalSteps: 4,
    loss: 1.5,
    tokensPerSecond: 10,
    epoch: 0,
    supervisedTokens: 40,
    elapsedSeconds: 3,
    lossByLanguage: {},
    layerChoices,
    chosenLayers: [],
    evalJson: '',
    stageIndex: 0,
    stageCount: 0,
    stageName: '',
  }) as Progress__Output;

describe('layer choices', () => {
  it('are checked at the coordinator, naming the field', () => {
    expect(() => checkProgress(progress({ sw: { counts: [3, 0, 1] } }))).not.toThrow();
    expect(() => checkProgress(progress({ Swahili: { counts: [1] } }))).toThrow(
      /progress\.layer_choices: "Swahili" is not a language code/,
    );
    expect(() => checkProgress(progress({ sw: { counts: [1, -2] } }))).toThrow(
      /progress\.layer_choices\.sw\[1\]: must be in 0\.\./,
    );
    expect(() => checkProgress(progress({ sw: { counts: [0.5] } }))).toThrow(
      /progress\.layer_choices\.sw\[0\]: must be an integer/,
    );
    expect(() => checkProgress(progress({ sw: { counts: new Array<number>(5000).fill(0) } }))).toThrow(
      /progress\.layer_choices\.sw: at most 4096 layers/,
    );
  });

  it('read as the three most chosen layers per language, with shares of its samples', () => {
    expect(layerChoiceLines({})).toEqual([]);
    expect(
      layerChoiceLines({
        layerChoices: { zh: { counts: [0, 2, 0, 0] }, sw: { counts: [5, 1, 1, 3] } },
      }),
    ).toEqual(['sw L0 50% L3 30% L1 10% (10 samples)', 'zh L1 100% (2 samples)']);
  });
});

describe('polytune_layer_choices_total', () => {
  it('counts each step’s choices per job, language and layer', async () => {
    const meter = new PromMeter();
    const metrics = createWorkerMetrics(meter);
    const step = (choicesByLanguage: Record<string, number[]>): void =>
      metrics.step('cc-1', {
        loss: 1,
        tokensPerSecond: 1,
        supervisedTokens: 10,
        stepSeconds: 1,
        computeSeconds: 0,
        allReduceSeconds: 0,
        optimizerSeconds: 0,
        allReduceBytes: 0,
        skipped: false,
        choicesByLanguage,
      });
    step({ sw: [2, 0, 1] });
    step({ sw: [1, 0, 0], zh: [0, 0, 3] });
    const text = await meter.metrics();
    expect(text).toContain('polytune_layer_choices_total{job_id="cc-1",language="sw",layer="0"} 3');
    expect(text).toContain('polytune_layer_choices_total{job_id="cc-1",language="sw",layer="2"} 1');
    expect(text).toContain('polytune_layer_choices_total{job_id="cc-1",language="zh",layer="2"} 3');
    expect(text).not.toContain('layer="1"'); // never chosen: no series
  });
});
