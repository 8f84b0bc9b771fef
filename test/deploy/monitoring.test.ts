/**
 * The Grafana dashboard and the alert rules: the dashboard loads as a Grafana dashboard model and
 * queries only metrics that exist (cross-checked against the metric families the coordinator and
 * worker register, plus the DCGM exporter's); every query and rule is valid PromQL and the rules
 * pass `promtool check rules` and their unit tests (`promtool test rules`).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultDashboard, type Dashboard } from '@grafana/schema';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { noopMeter, PromMeter } from '../../common/metrics.js';
import { createCoordinatorMetrics } from '../../coordinator/coordinator-metrics.js';
import type { JobStore } from '../../coordinator/job-store.js';
import { WorkerRegistry } from '../../coordinator/worker-registry.js';
import { createWorkerMetrics } from '../../worker/worker-metrics.js';
import { findPromTools, runTool, type PromTools } from './prometheus-tools.js';
import { ROOT } from './helm-render.js';

const DASHBOARD = join(ROOT, 'deploy/grafana/polytune.json');
const RULES = join(ROOT, 'deploy/prometheus/rules.yaml');
/** The DCGM exporter's GPU metrics the dashboard may use. */
const DCGM_METRICS = [
  'DCGM_FI_DEV_GPU_UTIL',
  'DCGM_FI_DEV_FB_USED',
  'DCGM_FI_DEV_FB_FREE',
  'DCGM_FI_DEV_POWER_USAGE',
  'DCGM_FI_DEV_MEM_COPY_UTIL',
];
/**
 * prometheus-nats-exporter's series (NATS chart's promExporter: -varz with the `nats` prefix) the dashboard and rules
 * use.
 */
const NATS_EXPORTER_METRICS = [
  'nats_varz_jetstream_stats_storage',
  'nats_varz_jetstream_config_max_storage',
  'nats_varz_slow_consumers',
  'nats_varz_in_bytes',
  'nats_varz_out_bytes',
];
const PANEL_TYPES = new Set(['row', 'timeseries', 'stat', 'bargauge', 'gauge', 'table', 'heatmap', 'text']);
const VARIABLE_TYPES = new Set([
  'query',
  'adhoc',
  'groupby',
  'constant',
  'datasource',
  'interval',
  'textbox',
  'custom',
  'system',
  'snapshot',
  'switch',
]);

/** Series names our processes export: metric families, histograms with _bucket/_sum/_count. */
async function exportedSeriesNames(): Promise<Set<string>> {
  const coordinator = new PromMeter();
  const registry = new WorkerRegistry();
  createCoordinatorMetrics(coordinator, { store: { list: async () => [] } as unknown as JobStore, registry }).close();
  registry.close();
  const worker = new PromMeter();
  createWorkerMetrics(worker);
  const names = new Set<string>();
  for (const m of [...(await coordinator.registry.getMetricsAsJSON()), ...(await worker.registry.getMetricsAsJSON())]) {
    names.add(m.name);
    if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
  }
  return names;
}

type Target = { refId: string; expr: string; datasource?: { uid?: string } };
type AnyPanel = {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: Target[];
  panels?: AnyPanel[];
  datasource?: { type?: string; uid?: string };
};

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Omit<Dashboard, 'panels'> & { panels: AnyPanel[] };
const panels: AnyPanel[] = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const queries = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, ...t })));

/** Identifiers in a PromQL expression that name metrics (not functions, keywords, labels, or template variables). */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // strings
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\[[^\]]*\]/g, '') // ranges
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '') // grouping label lists
    .replace(/\$\w+/g, '');
  const names = stripped.match(/[A-Za-z_:][A-Za-z0-9_:]*(?=\s*(\{|\[|\)|$|\s|[-+*/><=!]))/g) ?? [];
  return names.filter(
    (n) =>
      !/^(sum|avg|max|min|count|rate|irate|increase|histogram_quantile|scalar|time|label_values|by|without|and|or|unless|bool|offset)$/.test(
        n,
      ),
  );
}

describe('the Grafana dashboard', () => {
  it('is a Grafana dashboard model: schema version, uid, variables, panels on the 24-column grid', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.schemaVersion).toBeLessThanOrEqual(defaultDashboard.schemaVersion!);
    expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{8,40}$/);
    expect(dashboard.title).toBe('polytune');
    for (const v of dashboard.templating?.list ?? []) {
      expect(VARIABLE_TYPES.has(v.type), v.name).toBe(true);
      expect(v.name).toMatch(/^[a-z_]+$/);
    }
    expect((dashboard.templating?.list ?? []).map((v) => v.name)).toEqual(['datasource', 'job_id']);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(PANEL_TYPES.has(p.type), `${p.title}: ${p.type}`).toBe(true);
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      expect(p.gridPos.h).toBeGreaterThan(0);
      if (p.type === 'row') continue;
      expect(p.datasource).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      const refIds = p.targets!.map((t) => t.refId);
      expect(new Set(refIds).size).toBe(refIds.length);
    }
  });

  it('has the panels the issue asks for', () => {
    const titles = panels.map((p) => p.title);
    for (const t of [
      'Loss per language',
      'Throughput',
      'Step time breakdown (mean per step)',
      'All-reduce bandwidth',
      'Workers by state',
      'Generation',
      'Jobs by state',
      'GPU utilization (DCGM)',
    ]) {
      expect(titles).toContain(t);
    }
  });

  it(
    'units match the metrics: bytes for bytes, MiB for DCGM memory, ' +
      "a count for tensors; DCGM panels only show the jobs' pods",
    () => {
      type Unit = { fieldConfig?: { defaults?: { unit?: string } } };
      const unitOf = (title: string): string | undefined =>
        (panels.find((p) => p.title === title) as (AnyPanel & Unit) | undefined)?.fieldConfig?.defaults?.unit;
      for (const p of panels as Array<AnyPanel & Unit>) {
        const exprs = (p.targets ?? []).map((t) => t.expr);
        if (exprs.length === 0) continue;
        const unit = p.fieldConfig?.defaults?.unit;
        // A panel has one unit: all its series are of one kind.
        if (exprs.every((e) => /_bytes\b|_storage\b/.test(e) && !/rate\(/.test(e))) expect(unit, p.title).toBe('bytes');
        if (exprs.some((e) => e.includes('polytune_tfjs_tensors'))) {
          expect(unit, p.title).toBe('short');
          expect(
            exprs.every((e) => e.includes('polytune_tfjs_tensors')),
            p.title,
          ).toBe(true);
        }
        if (exprs.some((e) => e.includes('DCGM_'))) {
          expect(
            exprs.every((e) => /and on \(namespace, pod\) .*job_id=~"\$job_id"/.test(e)),
            p.title,
          ).toBe(true);
        }
      }
      expect(unitOf('GPU memory used (DCGM)')).toBe('mbytes');
      expect(unitOf('TensorFlow.js memory')).toBe('bytes');
      expect(unitOf('TensorFlow.js tensors')).toBe('short');
      expect(panels.map((p) => p.title)).toEqual(
        expect.arrayContaining(['JetStream storage used', 'NATS slow consumers', 'Workers: backend and device']),
      );
    },
  );

  it("queries only metrics that exist: the coordinator's and workers' registries, and DCGM's", async () => {
    const exported = await exportedSeriesNames();
    const used = new Set(queries.flatMap((q) => metricNames(q.expr)));
    expect(used.size).toBeGreaterThan(10);
    const unknown = [...used].filter(
      (n) => !exported.has(n) && !DCGM_METRICS.includes(n) && !NATS_EXPORTER_METRICS.includes(n),
    );
    expect(unknown).toEqual([]);
    // And every metric we export has a place on the dashboard or in the alerts, except the checked few.
    const rules = readFileSync(RULES, 'utf8');
    const unused = [...exported].filter(
      (n) =>
        !/_(bucket|sum|count)$/.test(n) &&
        !used.has(n) &&
        !used.has(`${n}_bucket`) &&
        !used.has(`${n}_count`) &&
        !rules.includes(n),
    );
    expect(unused).toEqual(['polytune_job_steps_completed']);
  });

  it('the metric definitions follow the naming rules (checked when they are defined)', () => {
    expect(() => createWorkerMetrics(noopMeter)).not.toThrow();
    expect(() => noopMeter.counter({ name: 'polytune_steps', help: 'x' })).toThrow(/ends in _total/);
    expect(() => noopMeter.gauge({ name: 'polytune_loss', help: 'x', labelNames: ['step'] })).toThrow(
      /reserved or high-cardinality/,
    );
    expect(() => noopMeter.gauge({ name: 'loss', help: 'x' })).toThrow(/polytune_/);
  });
});

const tools = findPromTools();
const skip = 'skip' in tools ? tools.skip : undefined;
if (skip) console.warn(`monitoring: ${skip}`);

describe.skipIf(skip !== undefined)('PromQL and rules (promtool)', () => {
  const { promtool } = tools as PromTools;

  it('promtool check rules passes on deploy/prometheus/rules.yaml', async () => {
    const r = await runTool(promtool, ['check', 'rules', RULES]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('SUCCESS: 11 rules found');
  });

  it('promtool test rules: each alert fires on the series it is for, and only then', async () => {
    const r = await runTool(promtool, ['test', 'rules', join(ROOT, 'deploy/prometheus/rules.test.yaml')]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('SUCCESS');
  });

  it('every dashboard query is valid PromQL (checked by promtool as recording rules)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'polytune-dash-'));
    try {
      const rules = queries.map((q, i) => ({
        record: `dashboard:query_${i}`,
        expr: q.expr
          .replace(/\$job_id/g, '.*')
          .replace(/\$__rate_interval/g, '1m')
          .replace(/\$__range/g, '1h'),
      }));
      writeFileSync(join(dir, 'dashboard.rules.yaml'), stringify({ groups: [{ name: 'dashboard', rules }] }));
      const r = await runTool(promtool, ['check', 'rules', join(dir, 'dashboard.rules.yaml')]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain(`SUCCESS: ${queries.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
