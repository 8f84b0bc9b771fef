/**
 * Metrics through a small interface (STYLE.md: "Code records metrics through a small interface;
 * only the entry point wires prom-client with its own Registry").
 *
 * - `MetricMeter` is what code records through: counters, gauges, histograms with typed label
 *   names, and observable gauges read at scrape time.
 * - `PromMeter` implements it with prom-client and a `Registry` of its own (never the global one).
 * - `noopMeter` drops everything: the default of libraries and tests.
 * - `startMetricsServer` serves a `PromMeter`'s registry at `GET /metrics` (and `GET /healthz`).
 *
 * Names follow DESIGN.md: `polytune_` prefix, units in the name (`_seconds`, `_bytes`), counters end
 * in `_total`; labels are low-cardinality (job and language yes, step never). `defineMetric` checks
 * this when a metric is defined, so a bad name fails the first test that builds the metric set.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  collectDefaultMetrics,
  Counter as PromCounter,
  Gauge as PromGauge,
  Histogram as PromHistogram,
  Registry,
} from 'prom-client';
import { silentLogger, type Logger } from './logging.js';

/** Label values of a metric whose label names are `L`. */
export type Labels<L extends string> = { readonly [K in L]: string };

export interface MetricOptions<L extends string> {
  /** `polytune_<what>_<unit>`; counters end in `_total`. */
  readonly name: string;
  readonly help: string;
  readonly labelNames?: readonly L[];
}

export interface HistogramOptions<L extends string> extends MetricOptions<L> {
  /** Upper bounds, ascending. @default DEFAULT_SECONDS_BUCKETS */
  readonly buckets?: readonly number[];
}

export interface Counter<L extends string> {
  inc(labels: Labels<L>, value?: number): void;
  /** Drops the series with these labels (e.g. when a job ends). */
  remove(labels: Labels<L>): void;
}

export interface Gauge<L extends string> {
  set(labels: Labels<L>, value: number): void;
  inc(labels: Labels<L>, value?: number): void;
  remove(labels: Labels<L>): void;
}

export interface Histogram<L extends string> {
  observe(labels: Labels<L>, value: number): void;
  remove(labels: Labels<L>): void;
}

/** Called by an observable gauge's callback once per series it reports at this scrape. */
export type Observe<L extends string> = (labels: Labels<L>, value: number) => void;

export interface MetricMeter {
  counter<L extends string = never>(options: MetricOptions<L>): Counter<L>;
  gauge<L extends string = never>(options: MetricOptions<L>): Gauge<L>;
  histogram<L extends string = never>(options: HistogramOptions<L>): Histogram<L>;
  /**
   * A gauge whose series are read at scrape time from `collect` (series it does not report are
   * gone). An error in `collect` is logged and leaves the gauge empty for that scrape.
   */
  observableGauge<L extends string = never>(
    options: MetricOptions<L>,
    collect: (observe: Observe<L>) => void | Promise<void>,
  ): void;
}

/** Durations from a millisecond to ten minutes: tiny CPU jobs and 7B GPU steps alike. */
export const DEFAULT_SECONDS_BUCKETS: readonly number[] = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
];

export const METRIC_PREFIX = 'polytune_';
/**
 * Label names reserved by Prometheus for target labels; a metric using them would be renamed `exported_*` on scrape.
 */
const RESERVED_LABELS = new Set(['job', 'instance', 'le', 'quantile', 'step']);

export type MetricKind = 'counter' | 'gauge' | 'histogram';

/** Throws a RangeError when a definition breaks the naming rules above. */
export function checkMetricDefinition(kind: MetricKind, options: MetricOptions<string>): void {
  const { name } = options;
  const fail = (why: string): never => {
    throw new RangeError(`metric ${name}: ${why}`);
  };
  if (!/^polytune_[a-z][a-z0-9_]*[a-z0-9]$/.test(name))
    fail(`must match polytune_[a-z0-9_]+ (prefix ${METRIC_PREFIX})`);
  if (kind === 'counter' && !name.endsWith('_total')) fail('a counter ends in _total');
  if (kind !== 'counter' && name.endsWith('_total')) fail('only counters end in _total');
  if (kind === 'histogram' && /_(bucket|count|sum)$/.test(name))
    fail('a histogram name must not end in _bucket, _count or _sum');
  if (options.help.trim() === '') fail('help is empty');
  for (const l of options.labelNames ?? []) {
    if (!/^[a-z][a-z0-9_]*$/.test(l)) fail(`label ${l}: must match [a-z][a-z0-9_]*`);
    if (RESERVED_LABELS.has(l)) fail(`label ${l}: reserved or high-cardinality`);
  }
}

// ---------------------------------------------------------------------------------------------
// no-op
// ---------------------------------------------------------------------------------------------

const noopSeries = { inc: () => {}, set: () => {}, observe: () => {}, remove: () => {} };

/** Records nothing; checks definitions all the same. */
export const noopMeter: MetricMeter = {
  counter: (o) => (checkMetricDefinition('counter', o), noopSeries),
  gauge: (o) => (checkMetricDefinition('gauge', o), noopSeries),
  histogram: (o) => (checkMetricDefinition('histogram', o), noopSeries),
  observableGauge: (o) => checkMetricDefinition('gauge', o),
};

// ---------------------------------------------------------------------------------------------
// prom-client
// ---------------------------------------------------------------------------------------------

export interface PromMeterOptions {
  /**
   * Also export prom-client's default process and Node.js metrics (`process_*`, `nodejs_*`). Off by
   * default: three of them (`nodejs_active_handles_total`, ...) are gauges named like counters, which
   * `promtool check metrics` refuses. @default false
   */
  defaultMetrics?: boolean;
  /** Labels added to every series of this registry. @default none */
  defaultLabels?: Record<string, string>;
  /** Where failures of observable gauges are logged. @default silentLogger */
  logger?: Logger;
}

/** The prom-client implementation, with a Registry of its own. */
export class PromMeter implements MetricMeter {
  readonly registry: Registry;
  private readonly logger: Logger;

  constructor(options: PromMeterOptions = {}) {
    this.registry = new Registry();
    this.logger = options.logger ?? silentLogger;
    if (options.defaultLabels) this.registry.setDefaultLabels(options.defaultLabels);
    if (options.defaultMetrics ?? false) collectDefaultMetrics({ register: this.registry });
  }

  counter<L extends string = never>(o: MetricOptions<L>): Counter<L> {
    checkMetricDefinition('counter', o);
    const c = new PromCounter<L>({
      name: o.name,
      help: o.help,
      labelNames: [...(o.labelNames ?? [])],
      registers: [this.registry],
    });
    return { inc: (labels, value = 1) => c.inc(labels as never, value), remove: (labels) => c.remove(labels as never) };
  }

  gauge<L extends string = never>(o: MetricOptions<L>): Gauge<L> {
    checkMetricDefinition('gauge', o);
    const g = new PromGauge<L>({
      name: o.name,
      help: o.help,
      labelNames: [...(o.labelNames ?? [])],
      registers: [this.registry],
    });
    return {
      set: (labels, value) => g.set(labels as never, value),
      inc: (labels, value = 1) => g.inc(labels as never, value),
      remove: (labels) => g.remove(labels as never),
    };
  }

  histogram<L extends string = never>(o: HistogramOptions<L>): Histogram<L> {
    checkMetricDefinition('histogram', o);
    const h = new PromHistogram<L>({
      name: o.name,
      help: o.help,
      labelNames: [...(o.labelNames ?? [])],
      buckets: [...(o.buckets ?? DEFAULT_SECONDS_BUCKETS)],
      registers: [this.registry],
    });
    return {
      observe: (labels, value) => h.observe(labels as never, value),
      remove: (labels) => h.remove(labels as never),
    };
  }

  observableGauge<L extends string = never>(
    o: MetricOptions<L>,
    collect: (observe: Observe<L>) => void | Promise<void>,
  ): void {
    checkMetricDefinition('gauge', o);
    const logger = this.logger;
    new PromGauge<L>({
      name: o.name,
      help: o.help,
      labelNames: [...(o.labelNames ?? [])],
      registers: [this.registry],
      async collect() {
        this.reset();
        try {
          await collect((labels, value) => this.set(labels as never, value));
        } catch (e) {
          this.reset();
          logger.warn('metric collection failed', {
            metric: o.name,
            error: e instanceof Error ? e.message : String(e),
          });
        }
      },
    });
  }

  /** The exposition text (what `/metrics` serves). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** Names of the metric families in the registry (a histogram is one family: `x`, not `x_bucket`). */
  metricNames(): string[] {
    return this.registry.getMetricsAsArray().map((m) => (m as unknown as { name: string }).name);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

export interface MetricsServerOptions {
  meter: PromMeter;
  /** 0 picks a free port. */
  port: number;
  /** @default '0.0.0.0' */
  host?: string;
  logger?: Logger;
}

export interface MetricsServer {
  readonly port: number;
  /** `http://HOST:PORT/metrics` (HOST as bound). */
  readonly url: string;
  /** Idempotent. */
  close(): Promise<void>;
}

/** Serves `GET /metrics` (Prometheus text format) and `GET /healthz` (`ok`). */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { meter } = options;
  const logger = options.logger ?? silentLogger;
  const host = options.host ?? '0.0.0.0';
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found; try /metrics\n');
      return;
    }
    meter.metrics().then(
      (text) => res.writeHead(200, { 'content-type': meter.registry.contentType }).end(text),
      (e: unknown) => {
        logger.error('metrics scrape failed', { error: e instanceof Error ? e.message : String(e) });
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  let closed: Promise<void> | undefined;
  return {
    port,
    url: `http://${shown}:${port}/metrics`,
    close: () => {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}
