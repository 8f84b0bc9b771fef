/**
 * The chart against issue 13's review: each item fixed is asserted on the rendered manifests
 * (tools/helm-render, see helm-render.ts). Secure defaults, Kueue's queue label alone, names of a
 * 60-character release, NATS pods under a NetworkPolicy and scraped, the CUDA cache and the probes,
 * and the values users expect.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { CHART, helmRender, mergedValues, render, type K8sObject } from './helm-render.js';
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';

const bin = helmRender();
const skip = typeof bin === 'string' ? undefined : bin.skip;
const NATS_AUTH = [
  '--set',
  'natsAuth.existingSecret=polytune-nats-creds',
  '--set',
  'nats.config.merge.$include=auth/nats-auth.conf',
];
const tmp = mkdtempSync(join(tmpdir(), 'polytune-chart-gpu-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

type Env = { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } };
type Container = {
  args?: string[];
  env?: Env[];
  envFrom?: unknown[];
  image: string;
  volumeMounts?: Array<{ name: string; mountPath: string }>;
  startupProbe?: { periodSeconds: number; failureThreshold: number };
  livenessProbe?: { exec?: { command: string[] } };
};
type Pod = {
  containers: Container[];
  volumes?: Array<Record<string, unknown>>;
  priorityClassName?: string;
  topologySpreadConstraints?: unknown[];
  securityContext: Record<string, unknown>;
  nodeSelector?: Record<string, string>;
  affinity?: unknown;
};
type Workload = K8sObject & {
  spec: { template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: Pod } };
};
const get = (objs: K8sObject[], kind: string, name: string): K8sObject => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind}/${name} in ${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
};
const pod = (objs: K8sObject[], kind: string, name: string): Pod =>
  (get(objs, kind, name) as Workload).spec.template.spec;

describe.skipIf(skip !== undefined)('helm/polytune against the GPU review', () => {
  const renderer = bin as string;
  const defaults = skip ? [] : render(renderer, NATS_AUTH);

  it(
    'a default install has auth on: both tokens generated ' +
      '(different, 40 characters) into the Secret the pods read',
    () => {
      const secret = get(defaults, 'Secret', 'polytune-auth');
      const token = Buffer.from(secret.data!['token']!, 'base64').toString();
      const worker = Buffer.from(secret.data!['worker-token']!, 'base64').toString();
      expect(token).toMatch(/^[A-Za-z0-9]{40}$/);
      expect(worker).toMatch(/^[A-Za-z0-9]{40}$/);
      expect(worker).not.toBe(token);
      const c = pod(defaults, 'Deployment', 'polytune-coordinator').containers[0]!;
      expect(c.env?.find((e) => e.name === 'POLYTUNE_TOKEN')?.valueFrom?.secretKeyRef).toEqual({
        name: 'polytune-auth',
        key: 'token',
      });
      const w = pod(defaults, 'StatefulSet', 'polytune-worker').containers[0]!;
      expect(w.env?.find((e) => e.name === 'POLYTUNE_WORKER_TOKEN')?.valueFrom?.secretKeyRef).toEqual({
        name: 'polytune-auth',
        key: 'worker-token',
      });
      expect(w.env?.some((e) => e.name === 'POLYTUNE_TOKEN')).toBe(false);
      // NATS auth on: the coordinator gets its credentials; the workers none (their job's come with the assignment).
      expect(c.env?.find((e) => e.name === 'POLYTUNE_NATS_CREDS')?.value).toBe('/etc/polytune/nats/coordinator.creds');
      const nats = mergedValues(renderer, NATS_AUTH)['nats'] as {
        natsBox: { enabled: boolean };
        container: { image: { tag: string } };
      };
      expect(nats.natsBox.enabled).toBe(false);
    },
  );

  it('the NATS server is past CVE-2025-30215 (2.10.27 / 2.11.1) and the subchart is 1.3.x', () => {
    const nats = mergedValues(renderer, NATS_AUTH)['nats'] as {
      container: { image: { repository: string; tag: string } };
    };
    const [major, minor, patch] = /^(\d+)\.(\d+)\.(\d+)/.exec(nats.container.image.tag)!.slice(1).map(Number) as [
      number,
      number,
      number,
    ];
    expect(major).toBe(2);
    expect(minor === 10 ? patch >= 27 : minor > 11 || (minor === 11 && patch >= 1)).toBe(true);
    const chart = parseYaml(readFileSync(join(CHART, 'Chart.yaml'), 'utf8')) as {
      dependencies: Array<{ name: string; version: string }>;
    };
    expect(chart.dependencies.find((d) => d.name === 'nats')!.version).toMatch(/^1\.3\.\d+$/);
  });

  it(
    'NetworkPolicies are on and cover the NATS pods: clients ' +
      "only from this release's pods, routes from NATS, metrics",
    () => {
      const np = get(defaults, 'NetworkPolicy', 'polytune-nats') as K8sObject & {
        spec: {
          podSelector: { matchLabels: Record<string, string> };
          ingress: Array<{
            ports: Array<{ port: number }>;
            from?: Array<{ podSelector?: { matchLabels: Record<string, string> } }>;
          }>;
        };
      };
      expect(np.spec.podSelector.matchLabels).toEqual({
        'app.kubernetes.io/name': 'nats',
        'app.kubernetes.io/instance': 'polytune',
        'app.kubernetes.io/component': 'nats',
      });
      const client = np.spec.ingress.find((r) => r.ports.some((p) => p.port === 4222))!;
      expect(client.from).toEqual([
        {
          podSelector: {
            matchLabels: { 'app.kubernetes.io/name': 'polytune', 'app.kubernetes.io/instance': 'polytune' },
          },
        },
      ]);
      expect(
        np.spec.ingress.find((r) => r.ports.some((p) => p.port === 6222))!.from![0]!.podSelector!.matchLabels[
          'app.kubernetes.io/name'
        ],
      ).toBe('nats');
      expect(np.spec.ingress.flatMap((r) => r.ports.map((p) => p.port)).sort()).toEqual([4222, 6222, 7777, 8222]);
      for (const n of ['polytune-coordinator', 'polytune-worker'])
        expect(get(defaults, 'NetworkPolicy', n)).toBeDefined();
    },
  );

  it('the NATS exporter is scraped (PodMonitor on prom-metrics) when the Prometheus Operator is there', () => {
    const objs = render(renderer, [...NATS_AUTH, '--api-versions', 'monitoring.coreos.com/v1']);
    const pm = get(objs, 'PodMonitor', 'polytune-nats') as K8sObject & {
      spec: { podMetricsEndpoints: Array<{ port: string }>; selector: { matchLabels: Record<string, string> } };
    };
    expect(pm.spec.podMetricsEndpoints.map((e) => e.port)).toEqual(['prom-metrics']);
    expect(pm.spec.selector.matchLabels['app.kubernetes.io/name']).toBe('nats');
  });

  it('the coordinator and the workers confine spec paths to the shared volume, or to the roots given', () => {
    const env = (objs: K8sObject[], kind: string, name: string): Record<string, string | undefined> =>
      Object.fromEntries((pod(objs, kind, name).containers[0]!.env ?? []).map((e) => [e.name, e.value]));
    const roots = (objs: K8sObject[]): (string | undefined)[] =>
      [env(objs, 'Deployment', 'polytune-coordinator'), env(objs, 'StatefulSet', 'polytune-worker')].map(
        (e) => e['POLYTUNE_STORAGE_ROOTS'],
      );
    expect(roots(defaults)).toEqual(['/data', '/data']);
    const file = join(tmp, 'roots.yaml');
    writeFileSync(file, 'storageRoots: [/data, /models, /runs]\n');
    expect(roots(render(renderer, [...NATS_AUTH, '-f', file]))).toEqual(['/data:/models:/runs', '/data:/models:/runs']);
    expect(roots(render(renderer, [...NATS_AUTH, '--set', 'persistence.enabled=false']))).toEqual([
      undefined,
      undefined,
    ]);
  });

  it('Kueue mode renders only the queue label', () => {
    const objs = render(renderer, [
      ...NATS_AUTH,
      '--set',
      'gangScheduling.mode=kueue',
      '--set',
      'gangScheduling.kueue.queueName=gpu',
    ]);
    const text = JSON.stringify(objs);
    expect(text.match(/kueue\.x-k8s\.io\/[a-z-]+/g)).toEqual(['kueue.x-k8s.io/queue-name']);
    expect(get(objs, 'StatefulSet', 'polytune-worker').metadata.labels?.['kueue.x-k8s.io/queue-name']).toBe('gpu');
    expect(text).not.toContain('pod-group');
  });

  it(
    'a 60-character release renders valid names: a StatefulSet ' + 'of at most 52, every name and label a DNS label',
    () => {
      const release = 'r'.repeat(50) + '-abcdefghi';
      expect(release).toHaveLength(60);
      const objs = render(renderer, [
        ...NATS_AUTH,
        '--name',
        release,
        '--api-versions',
        'monitoring.coreos.com/v1',
        '--set',
        'gangScheduling.mode=volcano',
        '--api-versions',
        'scheduling.volcano.sh/v1beta1',
      ]);
      expect(objs.length).toBeGreaterThan(10);
      for (const o of objs) {
        expect(o.metadata.name, `${o.kind}`).toMatch(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/);
        for (const v of Object.values(o.metadata.labels ?? {}))
          expect(v.length, `${o.kind}/${o.metadata.name} label ${v}`).toBeLessThanOrEqual(63);
      }
      const sts = objs.find((o) => o.kind === 'StatefulSet')!;
      expect(sts.metadata.name.length).toBeLessThanOrEqual(52);
      expect(sts.metadata.name.endsWith('-worker')).toBe(true);
      // The Services the pods reach each other by stay within 63 too (a DNS label).
      for (const s of objs.filter((o) => o.kind === 'Service')) expect(s.metadata.name.length).toBeLessThanOrEqual(63);
    },
  );

  it(
    'the CUDA cache is on a writable volume with a large size, and ' +
      'the startup probe allows the first compile (>= 30 minutes)',
    () => {
      const w = pod(defaults, 'StatefulSet', 'polytune-worker');
      const c = w.containers[0]!;
      const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));
      expect(env['CUDA_CACHE_PATH']).toBe('/var/cache/cuda');
      expect(Number(env['CUDA_CACHE_MAXSIZE'])).toBeGreaterThanOrEqual(2 ** 31);
      expect(c.volumeMounts).toContainEqual({ name: 'cuda-cache', mountPath: '/var/cache/cuda' });
      expect(w.volumes?.find((v) => v['name'] === 'cuda-cache')).toMatchObject({ emptyDir: { sizeLimit: '8Gi' } });
      expect(c.startupProbe!.periodSeconds * c.startupProbe!.failureThreshold).toBeGreaterThanOrEqual(30 * 60);
      const kept = render(renderer, [...NATS_AUTH, '--set', 'worker.cudaCache.existingClaim=cuda-cache']);
      expect(pod(kept, 'StatefulSet', 'polytune-worker').volumes?.find((v) => v['name'] === 'cuda-cache')).toEqual({
        name: 'cuda-cache',
        persistentVolumeClaim: { claimName: 'cuda-cache' },
      });
      expect(w.securityContext['fsGroupChangePolicy']).toBe('OnRootMismatch');
    },
  );

  it(
    'the liveness probe reads the heartbeat files: fresh ones pass, ' +
      'a stale or a missing one fails (a long step cannot fail it)',
    () => {
      const objs = render(renderer, [
        ...NATS_AUTH,
        '--set',
        'worker.processesPerPod=2',
        '--set',
        'worker.liveness.maxStallSeconds=600',
      ]);
      const [sh, flag, script] = pod(objs, 'StatefulSet', 'polytune-worker').containers[0]!.livenessProbe!.exec!
        .command as [string, string, string];
      expect([sh, flag]).toEqual(['sh', '-c']);
      const dir = join(tmp, 'heartbeat');
      mkdirSync(dir, { recursive: true });
      const run = (): number | null => spawnSync('sh', ['-c', script.replaceAll('/tmp/heartbeat', dir)]).status;
      writeFileSync(join(dir, 'worker-0.heartbeat'), 'x');
      expect(run()).not.toBe(0); // one of two processes has no heartbeat yet
      writeFileSync(join(dir, 'worker-1.heartbeat'), 'x');
      expect(run()).toBe(0);
      const old = Date.now() / 1000 - 599; // a 10-minute synchronous step: still alive
      utimesSync(join(dir, 'worker-1.heartbeat'), old, old);
      expect(run()).toBe(0);
      utimesSync(join(dir, 'worker-1.heartbeat'), old - 60, old - 60);
      expect(run()).not.toBe(0);
    },
  );

  it(
    'the values users expect render: priorityClassName, topologySpreadConstraints, ' +
      'placement per component, extra volumes, envFrom, digests, name overrides, a PDB, --tf32',
    () => {
      const digest = `sha256:${'a'.repeat(64)}`;
      const file = join(tmp, 'values.yaml');
      writeFileSync(
        file,
        `
fullnameOverride: tune
coordinator:
  image: { digest: "${digest}" }
  priorityClassName: system-cluster-critical
  nodeSelector: { pool: cpu }
  affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { ` +
          `nodeSelectorTerms: [{ matchExpressions: [{ key: pool, operator: In, values: [cpu] }] }] } } }
  envFrom: [{ configMapRef: { name: coord-env } }]
  extraVolumes: [{ name: extra, configMap: { name: extra } }]
  extraVolumeMounts: [{ name: extra, mountPath: /etc/extra }]
  topologySpreadConstraints: [{ maxSkew: 1, topologyKey: ` +
          `topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway }]
worker:
  image: { digest: "${digest}" }
  priorityClassName: training-high
  nodeSelector: { pool: gpu }
  envFrom: [{ secretRef: { name: hf-token } }]
  extraVolumes: [{ name: models, persistentVolumeClaim: { claimName: models } }]
  extraVolumeMounts: [{ name: models, mountPath: /models }]
  topologySpreadConstraints: [{ maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule }]
  podDisruptionBudget: { maxUnavailable: 2 }
  tf32: true
`,
      );
      const validate = new Ajv({ allErrors: true, allowUnionTypes: true }).compile(
        JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8')) as object,
      );
      expect(validate(mergedValues(renderer, ['-f', file])), JSON.stringify(validate.errors)).toBe(true);
      expect(validate(mergedValues(renderer, ['--set', 'worker.image.digest=latest']))).toBe(false);
      const objs = render(renderer, [...NATS_AUTH, '-f', file]);
      const c = pod(objs, 'Deployment', 'tune-coordinator');
      const w = pod(objs, 'StatefulSet', 'tune-worker');
      expect(c.containers[0]!.image).toBe(`ghcr.io/polytune/polytune-coordinator@${digest}`);
      expect(w.containers[0]!.image).toBe(`ghcr.io/polytune/polytune-worker-gpu@${digest}`);
      expect([c.priorityClassName, w.priorityClassName]).toEqual(['system-cluster-critical', 'training-high']);
      expect([c.nodeSelector, w.nodeSelector]).toEqual([{ pool: 'cpu' }, { pool: 'gpu' }]);
      expect(c.affinity).toBeDefined();
      expect(c.containers[0]!.envFrom).toEqual([{ configMapRef: { name: 'coord-env' } }]);
      expect(w.containers[0]!.envFrom).toEqual([{ secretRef: { name: 'hf-token' } }]);
      expect(c.volumes).toContainEqual({ name: 'extra', configMap: { name: 'extra' } });
      expect(c.containers[0]!.volumeMounts).toContainEqual({ name: 'extra', mountPath: '/etc/extra' });
      expect(w.volumes).toContainEqual({ name: 'models', persistentVolumeClaim: { claimName: 'models' } });
      expect(w.containers[0]!.volumeMounts).toContainEqual({ name: 'models', mountPath: '/models' });
      expect(c.topologySpreadConstraints).toHaveLength(1);
      expect(w.topologySpreadConstraints).toHaveLength(1);
      expect(
        (get(objs, 'PodDisruptionBudget', 'tune-worker') as K8sObject & { spec: { maxUnavailable: number } }).spec
          .maxUnavailable,
      ).toBe(2);
      expect(w.containers[0]!.args).toContain('--tf32');
      const named = render(renderer, [...NATS_AUTH, '--set', 'nameOverride=tuner']);
      expect(get(named, 'StatefulSet', 'polytune-tuner-worker').metadata.labels?.['app.kubernetes.io/name']).toBe(
        'tuner',
      );
    },
  );
});
