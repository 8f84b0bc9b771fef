/**
 * What a person sees, as pure functions (issue 19): units per kind, durations, the recent rate and
 * ETA, the live and plain progress, the status table and block, the evaluation table, and the
 * job timings that survive re-forms and coordinator restarts.
 */
import { describe, expect, it, vi } from 'vitest';
import { evalMarkdownTables, evalTextTables, parseEvalTable } from '../../common/eval-table.js';
import type { JobSpec } from '../../common/jobspec.js';
import { newJobRecord, parseStoredRecord, toWireJob, type JobRecord } from '../../coordinator/job-record.js';
import { closeGeneration, jobTimings, openGeneration, recordCompute } from '../../coordinator/job-timings.js';
import {
  formatDuration,
  formatRate,
  jobRate,
  kindOf,
  stageText,
  type JobView,
} from '../../coordinator/views/job-view.js';
import {
  bar,
  createProgressView,
  liveBlock,
  plainProgressLine,
  RecentRate,
  stateLine,
  type LiveWriter,
} from '../../coordinator/views/progress-view.js';
import { outputFormat, statusBlock, statusTable, timingsJson } from '../../coordinator/views/status-view.js';
import type { GenerationTiming__Output } from '../../proto/index.js';
import { evalMarkdown, type EvalReport } from '../../worker/eval/report.js';

const NOW = Date.UTC(2026, 0, 1, 12, 0, 0);

function gen(g: Partial<GenerationTiming__Output> = {}): GenerationTiming__Output {
  return {
    generation: 1,
    worldSize: 2,
    startedAt: NOW - 10_000,
    endedAt: 0,
    wallSeconds: 10,
    computeSeconds: 9,
    fromStep: 0,
    endReason: '',
    ...g,
  };
}

function job(o: Partial<JobView> = {}): JobView {
  return {
    id: 'tiny-abcde',
    name: 'tiny',
    state: 'RUNNING',
    step: 12,
    totalSteps: 24,
    hasLoss: true,
    lastLoss: 1.25,
    firstLoss: 5,
    tokensPerSecond: 1000,
    elapsedSeconds: 6,
    generation: 1,
    workers: ['w0', 'w1'],
    error: '',
    outputDir: '/runs/tiny',
    createdAt: NOW - 60_000,
    startedAt: NOW - 10_000,
    finishedAt: 0,
    lossByLanguage: {},
    specJson: '',
    kind: 'TrainJob',
    wallSeconds: 10,
    computeSeconds: 9,
    reformSeconds: 0,
    generations: [gen()],
    ledgerJson: '',
    chosenLayers: [],
    evalJson: '',
    ...o,
  };
}

describe('units per kind', () => {
  it('a TrainJob in tok/s; an EvalJob in problems/s and a LayerAnalysis in prompts/s, from steps over time', () => {
    expect(formatRate(jobRate(job()))).toBe('1000 tok/s');
    const ev = job({ kind: 'EvalJob', tokensPerSecond: 0, step: 30, elapsedSeconds: 12 });
    expect(formatRate(jobRate(ev))).toBe('2.50 problems/s');
    const la = job({ kind: 'LayerAnalysis', tokensPerSecond: 0, step: 64, elapsedSeconds: 4 });
    expect(formatRate(jobRate(la))).toBe('16.0 prompts/s');
    expect(plainProgressLine(ev)).toContain('2.50 problems/s');
    expect(plainProgressLine(ev)).not.toContain('tok/s');
  });

  it("a PruneJob's progress is in layers, from its row of the job-kind table; an unknown kind in steps", () => {
    const pj = job({ kind: 'PruneJob', tokensPerSecond: 0, hasLoss: false, step: 3, totalSteps: 8, elapsedSeconds: 6 });
    expect(plainProgressLine(pj)).toMatch(/^\[tiny-abcde\] layer 3\/8 {2}0\.50 layers\/s {2}ETA 10s /);
    expect(liveBlock(pj, undefined, false)[0]).toMatch(/\] {2}3\/8 {2} 37% {2}0\.50 layers\/s {2}ETA 10s$/);
    expect(statusBlock(pj, NOW)).toContain('layer       3/8 (37%)');
    expect(statusBlock(pj, NOW)).toContain('rate        0.50 layers/s, ETA 10s');
    expect(plainProgressLine(job({ kind: 'EvalJob', step: 5, totalSteps: 22 }))).toContain('problem 5/22');
    expect(plainProgressLine(job({ kind: 'LayerAnalysis', step: 5, totalSteps: 22 }))).toContain('prompt 5/22');
    const future = job({ kind: 'FutureJob', tokensPerSecond: 0, step: 3, elapsedSeconds: 6 });
    expect(plainProgressLine(future)).toMatch(/ step 3\/24 .*0\.50 steps\/s/);
  });

  it('never 0 tok/s: an unknown rate is left out', () => {
    const fresh = job({ tokensPerSecond: 0, step: 0 });
    expect(jobRate(fresh)).toBeUndefined();
    expect(plainProgressLine(fresh)).not.toContain('tok/s');
    expect(liveBlock(fresh, undefined, false)[0]).not.toContain('tok/s');
    expect(jobRate(job({ kind: 'EvalJob', tokensPerSecond: 0, step: 0 }))).toBeUndefined();
  });

  it('the kind comes from the wire field, else from the spec', () => {
    expect(kindOf(job({ kind: '', specJson: JSON.stringify({ kind: 'EvalJob' }) }))).toBe('EvalJob');
    expect(kindOf(job({ kind: '', specJson: '' }))).toBe('TrainJob');
  });
});

describe('formatting', () => {
  it('durations', () => {
    expect([3.21, 42, 185, 7620, 3 * 86400 + 4 * 3600].map(formatDuration)).toEqual([
      '3.2s',
      '42s',
      '3m05s',
      '2h07m',
      '3d04h',
    ]);
    expect(formatDuration(undefined)).toBe('-');
    expect(formatDuration(Infinity)).toBe('-');
  });

  it('the bar, and stages', () => {
    expect(bar(12, 24, 10)).toBe('[█████░░░░░]');
    expect(bar(0, 0)).toBe('');
    expect(stageText(job({ stageIndex: 1, stageCount: 3, stageName: 'answers' }))).toBe('stage 2/3 (answers)');
    expect(stageText(job())).toBeUndefined();
  });
});

describe('recent rate and ETA', () => {
  it('steps per second over the window; restarts when the step goes back', () => {
    const r = new RecentRate(10_000);
    r.add(0, 0);
    expect(r.stepsPerSecond()).toBeUndefined();
    r.add(1000, 1);
    r.add(2000, 2);
    expect(r.stepsPerSecond()).toBe(1);
    // a slow start falls out of the window: the rate is the recent one
    r.add(20_000, 20);
    r.add(21_000, 30);
    expect(r.stepsPerSecond()).toBe(10);
    r.add(22_000, 5); // a re-form went back
    expect(r.stepsPerSecond()).toBeUndefined();
  });

  it('the ETA comes from the recent rate when there is one', () => {
    expect(plainProgressLine(job(), 4)).toContain('ETA 3.0s'); // 12 steps left at 4/s
    expect(plainProgressLine(job())).toContain('ETA 6.0s'); // this generation: 12 steps in 6 s
    expect(liveBlock(job({ state: 'SUCCEEDED', step: 24 }), undefined, false)[0]).not.toContain('ETA');
  });
});

describe('progress view', () => {
  const langs = { lossByLanguage: { en: 0.9, de: 1.1 } };

  it('not a terminal: a line per step, state changes as lines, languages on the line', () => {
    const lines: string[] = [];
    const v = createProgressView({ live: false, write: (l) => lines.push(l) });
    v.update('SNAPSHOT', job({ state: 'PENDING', step: 0 }), NOW);
    v.update('STATE', job({ step: 0 }), NOW);
    v.update('PROGRESS', job({ step: 1, ...langs }), NOW + 500);
    v.update('PROGRESS', job({ step: 1 }), NOW + 600); // same step: no line
    v.update('PROGRESS', job({ step: 2 }), NOW + 1000);
    v.done();
    expect(lines).toHaveLength(4);
    expect(lines[0]).toBe('[tiny-abcde] Pending');
    expect(lines[1]).toBe('[tiny-abcde] Running (generation 1, workers w0, w1)');
    expect(lines[2]).toMatch(/^\[tiny-abcde\] step 1\/24 {2}loss 1\.2500 {2}1000 tok\/s .*de 1\.10 en 0\.90$/);
    expect(lines[3]).toMatch(/step 2\/24 .*ETA 11s/); // 1 step in 0.5 s recently, 22 left
  });

  it('a terminal: one redrawn block, state changes kept above it, languages on a second line when asked', () => {
    const calls: string[] = [];
    const live: LiveWriter = {
      render: (t) => calls.push(`render:${t}`),
      persist: (l) => calls.push(`persist:${l}`),
      done: () => calls.push('done'),
    };
    const lines: string[] = [];
    const v = createProgressView({ live: true, write: (l) => lines.push(l), liveWriter: live, languages: true });
    v.update('SNAPSHOT', job({ step: 0 }), NOW);
    v.update('PROGRESS', job({ step: 6, ...langs }), NOW + 1000);
    v.done();
    expect(lines).toEqual([]);
    expect(calls[0]).toBe('persist:[tiny-abcde] Running (generation 1, workers w0, w1)');
    expect(calls[1]).toMatch(/^render:tiny-abcde {2}\[░+\] {2}0\/24 {4}0%/);
    const [first, second] = calls[2]!.split('\n');
    const bar6 = `[${'█'.repeat(6)}${'░'.repeat(18)}]`;
    expect(first).toBe(`render:tiny-abcde  ${bar6}  6/24   25%  loss 1.2500  1000 tok/s  ETA 3.0s`);
    expect(second).toBe('  loss by language: de 1.10 en 0.90');
    expect(calls.at(-1)).toBe('done');
  });

  it('a terminal: between updates the line is redrawn and the ETA counts down; done() stops it', () => {
    vi.useFakeTimers({ now: NOW });
    try {
      const frames: string[] = [];
      const live: LiveWriter = { render: (t) => frames.push(t), persist: () => {}, done: () => frames.push('done') };
      const v = createProgressView({ live: true, write: () => {}, liveWriter: live, redrawMs: 1000 });
      v.update('PROGRESS', job({ step: 12 }), NOW); // this generation: 12 steps in 6 s, 12 left: ETA 6 s
      expect(frames.at(-1)).toMatch(/ETA 6\.0s$/);
      vi.advanceTimersByTime(3000);
      expect(frames.at(-1)).toMatch(/ETA 3\.0s$/);
      v.done();
      const n = frames.length;
      vi.advanceTimersByTime(5000);
      expect(frames).toHaveLength(n);
      expect(frames.at(-1)).toBe('done');
    } finally {
      vi.useRealTimers();
    }
  });

  it('several jobs: a line each, in the order they came, each redrawn with its own progress', () => {
    const frames: string[] = [];
    const live: LiveWriter = { render: (t) => frames.push(t), persist: () => {}, done: () => {} };
    const v = createProgressView({ live: true, write: () => {}, liveWriter: live, redrawMs: 0 });
    v.update('SNAPSHOT', job({ id: 'a-11111', step: 2 }), NOW);
    v.update('SNAPSHOT', job({ id: 'b-22222', kind: 'EvalJob', tokensPerSecond: 0, step: 5, totalSteps: 10 }), NOW);
    v.update('PROGRESS', job({ id: 'a-11111', step: 3 }), NOW + 1000);
    v.done();
    const [a, b] = frames.at(-1)!.split('\n');
    expect(a).toMatch(/^a-11111 .* 3\/24 .* 1000 tok\/s {2}ETA 21s$/); // 1 step/s recently, 21 left
    // 5 problems in 6 s: 6 s left, drawn 1 s later
    expect(b).toMatch(/^b-22222 .* 5\/10 {3}50% {2}loss 1\.2500 {2}0\.83 problems\/s {2}ETA 5\.0s$/);
  });

  it('state lines say why a job went back to Pending', () => {
    expect(stateLine(job({ state: 'PENDING', error: 'worker w1 (rank 1) lost: heartbeat timeout' }))).toBe(
      '[tiny-abcde] Pending: worker w1 (rank 1) lost: heartbeat timeout',
    );
  });
});

describe('status', () => {
  it('-o and --json', () => {
    expect(outputFormat(undefined, undefined)).toBe('table');
    expect(outputFormat(undefined, true)).toBe('json');
    expect(outputFormat('yaml', undefined)).toBe('yaml');
    expect(outputFormat('wide', undefined)).toBe('wide');
    expect(() => outputFormat('xml', undefined)).toThrow(/-o: must be one of json, yaml, wide, got "xml"/);
    expect(() => outputFormat('yaml', true)).toThrow(/--json and -o yaml/);
  });

  it('a table with id, kind, state, stage, step/total, loss, rate, age; wide adds generation, world, wall, ETA', () => {
    const jobs = [
      job(),
      job({
        id: 'eval-xyz12',
        kind: 'EvalJob',
        state: 'SUCCEEDED',
        hasLoss: false,
        step: 250,
        totalSteps: 250,
        createdAt: NOW - 7200_000,
      }),
      job({
        id: 'staged-aaaaa',
        stageIndex: 1,
        stageCount: 2,
        stageName: 'answers',
        state: 'PENDING',
        tokensPerSecond: 0,
      }),
    ];
    const t = statusTable(jobs, false, NOW);
    expect(t[0]).toMatch(/^ID\s+KIND\s+STATE\s+STAGE\s+STEP\s+LOSS\s+RATE\s+AGE$/);
    expect(t[1]).toMatch(/^tiny-abcde\s+TrainJob\s+Running\s+-\s+12\/24\s+1\.2500\s+1000 tok\/s\s+1m00s$/);
    expect(t[2]).toMatch(/^eval-xyz12\s+EvalJob\s+Succeeded\s+-\s+250\/250\s+-\s+-\s+2h00m$/);
    expect(t[3]).toMatch(/^staged-aaaaa\s+TrainJob\s+Pending \(re-forming\)\s+2\/2 answers\s+12\/24/);
    expect(statusTable([job({ state: 'PENDING', generation: 0, step: 0 })], false, NOW)[1]).toMatch(
      /TrainJob\s+Pending\s+-/,
    );
    // columns line up
    const col = t[0]!.indexOf('STEP');
    expect(t.slice(1).every((l) => /\S/.test(l[col]!) && l[col - 1] === ' ')).toBe(true);
    const w = statusTable(jobs, true, NOW);
    expect(w[0]).toMatch(/AGE\s+GEN\s+WORKERS\s+WALL\s+ETA$/);
    expect(w[1]).toMatch(/1m00s\s+1\s+2\s+10s\s+6\.0s$/);
  });

  it('a job as a block: wall time, this generation, compute, re-forming, ledger, output', () => {
    const j = job({
      generation: 2,
      workers: ['w0', 'w2'],
      wallSeconds: 18.2,
      computeSeconds: 14,
      reformSeconds: 3.1,
      lossByLanguage: { en: 1, de: 2 },
      generations: [
        gen({ endedAt: NOW - 5000, wallSeconds: 12, endReason: 'worker w1 lost' }),
        gen({ generation: 2, wallSeconds: 2.1, fromStep: 6 }),
      ],
      ledgerJson: JSON.stringify({
        committed: [
          { from: 0, to: 6, generation: 1, worldSize: 3 },
          { from: 6, to: 12, generation: 2, worldSize: 2 },
        ],
        rolledBack: [],
      }),
    });
    const b = statusBlock(j, NOW);
    expect(b).toContain('job         tiny-abcde (TrainJob)');
    expect(b).toContain('state       Running');
    expect(b).toContain('generation  2, world 2: w0, w2');
    expect(b).toContain('step        12/24 (50%)');
    expect(b).toContain('loss        5.0000 -> 1.2500   (de 2.00 en 1.00)');
    expect(b).toContain('rate        1000 tok/s, ETA 12s');
    expect(b).toContain('time        wall 18s, this generation 2.1s, compute 14s, re-forming 3.1s (1 re-form)');
    expect(b).toContain('ledger      12 steps committed: 0-6 (gen 1, world 3), 6-12 (gen 2, world 2)');
    expect(b).toContain('output      /runs/tiny');
    expect(statusBlock({ ...j, stageIndex: 1, stageCount: 2, stageName: 'answer' }, NOW)).toContain(
      'stage       2/2 (answer)',
    );
    // a ledger of the wrong shape is left out, not a crash
    expect(statusBlock({ ...j, ledgerJson: '{"committed": 3}' }, NOW).some((l) => l.startsWith('ledger'))).toBe(false);
    expect(
      statusBlock({ ...j, ledgerJson: '{"committed": [{"from": "x"}], "rolledBack": []}' }, NOW).join('\n'),
    ).not.toContain('ledger');
    expect(timingsJson(j)).toMatchObject({
      wallSeconds: 18.2,
      generationSeconds: 2.1,
      computeSeconds: 14,
      reformSeconds: 3.1,
    });
  });
});

describe('evaluation tables', () => {
  const report: EvalReport = {
    name: 'final',
    step: 0,
    maxNewTokens: 64,
    template: 'alpaca',
    worldSize: 2,
    seconds: 3,
    benchmarks: [
      {
        benchmark: 'mgsm',
        average: 0.5,
        languages: [
          { language: 'en', correct: 3, total: 4, accuracy: 0.75 },
          { language: 'sw', correct: 1, total: 4, accuracy: 0.25 },
        ],
      },
    ],
  };

  it('language by row, the average last, in text and in the Markdown report', () => {
    expect(evalTextTables(report)).toEqual([
      '  mgsm (final)',
      '  language  accuracy %  correct',
      '  en              75.0      3/4',
      '  sw              25.0      1/4',
      '  average         50.0      4/8',
    ]);
    expect(evalMarkdownTables(report)).toEqual([
      '### mgsm',
      '',
      '| language | accuracy % | correct |',
      '|---|---:|---:|',
      '| en | 75.0 | 3/4 |',
      '| sw | 25.0 | 1/4 |',
      '| average | 50.0 | 4/8 |',
      '',
    ]);
    expect(evalMarkdown(report)).toContain('| sw | 25.0 | 1/4 |');
    // From elsewhere: parsed, or refused (not a stack trace)
    expect(parseEvalTable(JSON.stringify(report))).toMatchObject({
      name: 'final',
      benchmarks: [{ benchmark: 'mgsm' }],
    });
    const outOfRange = { name: 'x', benchmarks: [{ benchmark: 'm', average: 7, languages: [] }] };
    expect(parseEvalTable(JSON.stringify(outOfRange))).toBeUndefined();
    expect(parseEvalTable('not json')).toBeUndefined();
  });
});

describe('job timings', () => {
  const spec = {
    apiVersion: 'polytune/v1',
    kind: 'TrainJob',
    metadata: { name: 'unit' },
    spec: { output: { dir: '/o' }, workers: { count: 2 } },
  } as unknown as JobSpec;

  it('wall time spans the generations; compute is theirs; re-forming is the gaps', () => {
    const t0 = NOW;
    let g = openGeneration(undefined, { generation: 1, worldSize: 3, fromStep: 0 }, t0);
    g = recordCompute(g, 1, 5);
    g = recordCompute(g, 2, 99); // another generation's report changes nothing here
    g = closeGeneration(g, t0 + 6000, 'worker w1 lost');
    g = openGeneration(g, { generation: 2, worldSize: 2, fromStep: 6 }, t0 + 9000);
    g = recordCompute(g, 2, 2);
    const r: JobRecord = { ...newJobRecord('unit-abcde', spec, 2, t0 - 1000), startedAt: t0, generations: g };
    const running = jobTimings(r, t0 + 12_000);
    expect(running).toMatchObject({ wallSeconds: 12, computeSeconds: 7, reformSeconds: 3 });
    expect(running.generations.map((x) => x.wallSeconds)).toEqual([6, 3]);
    expect(running.generations[0]!.endReason).toBe('worker w1 lost');
    // waiting for the next gang: that is re-forming too
    const waiting = { ...r, generations: closeGeneration(g, t0 + 12_000, 'coordinator restarted') };
    expect(jobTimings(waiting, t0 + 20_000)).toMatchObject({ wallSeconds: 20, reformSeconds: 11 });
    // finished: the clock stops at finishedAt
    const done = { ...r, finishedAt: t0 + 18_000, generations: closeGeneration(g, t0 + 18_000) };
    expect(jobTimings(done, t0 + 100_000)).toMatchObject({ wallSeconds: 18, reformSeconds: 3 });
  });

  it('the store is not trusted: generations of the wrong shape make the record unreadable', () => {
    const t0 = NOW;
    const opened = openGeneration(undefined, { generation: 1, worldSize: 2, fromStep: 0 }, t0);
    const g = closeGeneration(opened, t0 + 1000, 'x');
    const r = { ...newJobRecord('unit-abcde', spec, 2, t0 - 1000), startedAt: t0, generations: g };
    const back = parseStoredRecord(r.id, JSON.stringify(r));
    expect(back.ok, JSON.stringify(back)).toBe(false); // the stub spec is not a valid TrainJob...
    expect(back).toMatchObject({ reason: 'spec' }); // ...but the record's shape, generations included, is
    const bad = { ...r, generations: [{ ...g[0]!, computeSeconds: -1 }] };
    const message = expect.stringMatching(/generations\.0\.computeSeconds/) as unknown;
    expect(parseStoredRecord(r.id, JSON.stringify(bad))).toMatchObject({ ok: false, reason: 'unreadable', message });
  });

  it('a record from before timings reads as none; the wire job carries them', () => {
    const old = { ...newJobRecord('unit-abcde', spec, 2, NOW - 5000), startedAt: NOW - 4000, finishedAt: NOW };
    expect(jobTimings(old)).toEqual({ wallSeconds: 4, computeSeconds: 0, reformSeconds: 0, generations: [] });
    const g1 = {
      generation: 1,
      worldSize: 2,
      startedAt: NOW - 4000,
      endedAt: NOW,
      computeSeconds: 3,
      fromStep: 0,
      endReason: '',
    };
    const wire = toWireJob({ ...old, generations: [g1] });
    expect(wire).toMatchObject({ kind: 'TrainJob', wallSeconds: 4, computeSeconds: 3, reformSeconds: 0 });
    expect(wire.generations?.[0]).toMatchObject({ generation: 1, wallSeconds: 4 });
  });
});
