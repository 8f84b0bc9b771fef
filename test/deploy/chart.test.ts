/**
 * helm/polytune renders, with default values and with every option on, into manifests that parse
 * as Kubernetes objects; what matters in them is asserted. Rendering is done by tools/helm-render
 * (Helm's engine: Go text/template + sprig), a test-only stand-in for `helm template`.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { TOKEN_ENV, WORKER_TOKEN_ENV } from '../../coordinator/auth.js';
import { CHART, ROOT, helmRender, mergedValues, render, runRender, type K8sObject } from './helm-render.js';

const bin = helmRender();
const skip = typeof bin === 'string' ? undefined : bin.skip;
if (skip) console.warn(`chart: ${skip}`);
const ALL_ON = join(ROOT, 'test', 'deploy', 'fixtures', 'values-all-on.yaml');
const OPERATOR_APIS = ['--api-versions', 'monitoring.coreos.com/v1', '--api-versions', 'scheduling.volcano.sh/v1beta1'];
/**
 * NATS authentication is on by default: the least a default install must give (an existing Secret and the server's
 * operator config).
 */
const NATS_AUTH = [
  '--set',
  'natsAuth.existingSecret=polytune-nats-creds',
  '--set',
  'nats.config.merge.$include=auth/nats-auth.conf',
];

type Container = {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: unknown }>;
  ports?: Array<{ name: string; containerPort: number }>;
  resources: { requests?: Record<string, unknown>; limits?: Record<string, unknown> };
  securityContext: Record<string, unknown>;
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  volumeMounts?: Array<{ name: string; mountPath: string }>;
};
type Probe = { httpGet?: { path: string; port: string }; tcpSocket?: { port: string }; exec?: { command: string[] } };
type PodSpec = {
  containers: Container[];
  securityContext: Record<string, unknown>;
  volumes?: Array<Record<string, unknown>>;
  schedulerName?: string;
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  affinity?: unknown;
  serviceAccountName?: string;
  imagePullSecrets?: unknown[];
};
type Workload = K8sObject & {
  spec: {
    replicas: number;
    template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec };
  };
};

const find = (objs: K8sObject[], kind: string, nameSuffix = ''): K8sObject => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name.endsWith(nameSuffix));
  if (!o) throw new Error(`no ${kind} *${nameSuffix} in ${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
};
const workload = (objs: K8sObject[], kind: string, suffix: string): Workload => find(objs, kind, suffix) as Workload;

const walk = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory() ? walk(join(dir, d.name)) : d.name.endsWith('.ts') ? [join(dir, d.name)] : [],
  );

/**
 * The security env vars the code reads, grepped out of it so that the chart cannot drift from it:
 * `serve` (coordinator/cli-security.ts serveSecurity: `flagOrEnv(v, 'flag', 'ENV')` and the two tokens)
 * and the worker (worker/cli.ts: `flagOrEnv(v, 'flag', 'ENV')` and `readToken(…, 'ENV')`).
 */
const CODE_ENV = ((): { serve: string[]; worker: string[] } => {
  const security = readFileSync(join(ROOT, 'coordinator/cli-security.ts'), 'utf8');
  const serve = /export function serveSecurity[\s\S]*?\n}\n/.exec(security)?.[0] ?? '';
  const serveEnv = [...serve.matchAll(/flagOrEnv\(v, '[a-z-]+', '(POLYTUNE_[A-Z_]+)'\)/g)].map((m) => m[1]!);
  if (/readToken\([^)]*\bTOKEN_ENV\b/.test(serve)) serveEnv.push(TOKEN_ENV);
  if (/readToken\([^)]*\bWORKER_TOKEN_ENV\b/.test(serve)) serveEnv.push(WORKER_TOKEN_ENV);
  const worker = readFileSync(join(ROOT, 'worker/cli.ts'), 'utf8');
  const workerEnv = [
    ...worker.matchAll(/flagOrEnv\(v, '[a-z-]+', '(POLYTUNE_[A-Z_]+)'\)|readToken\([^,]+, '(POLYTUNE_[A-Z_]+)'\)/g),
  ].map((m) => (m[1] ?? m[2])!);
  return { serve: [...new Set(serveEnv)].sort(), worker: [...new Set(workerEnv)].sort() };
})();
const SECURITY_ENV = new Set([...CODE_ENV.serve, ...CODE_ENV.worker]);
/** The security env vars a container gets, sorted. */
const securityEnv = (c: Container): string[] =>
  (c.env ?? [])
    .map((e) => e.name)
    .filter((n) => SECURITY_ENV.has(n))
    .sort();

type SecretKey = { secret: string; key: string };
/** The Secret keys a container can read as files (its mounted secret volumes' items). */
function mountedSecretKeys(pod: PodSpec, c: Container): SecretKey[] {
  return (c.volumeMounts ?? []).flatMap((m) => {
    const v = pod.volumes?.find((x) => x['name'] === m.name)?.['secret'] as
      { secretName: string; items?: Array<{ key: string }> } | undefined;
    if (!v) return [];
    if (!v.items) throw new Error(`secret volume ${m.name} mounts every key of ${v.secretName}: list items`);
    return v.items.map((i) => ({ secret: v.secretName, key: i.key }));
  });
}
/**
 * Where an env var's content comes from: `value` a secret key as the value itself, `file` the path
 * of a mounted secret key. The secret key must exist in the rendered Secret.
 */
function envSource(
  objs: K8sObject[],
  pod: PodSpec,
  c: Container,
  name: string,
): { value: SecretKey } | { file: SecretKey } {
  const e = c.env?.find((x) => x.name === name);
  if (!e) throw new Error(`${c.name} has no ${name}`);
  const exists = (k: SecretKey): void => {
    const s = objs.find((o) => o.kind === 'Secret' && o.metadata.name === k.secret);
    expect(s?.data?.[k.key], `${name}: Secret ${k.secret} has no key ${k.key}`).toBeDefined();
  };
  const ref = (e.valueFrom as { secretKeyRef?: { name: string; key: string } } | undefined)?.secretKeyRef;
  if (ref) {
    exists({ secret: ref.name, key: ref.key });
    return { value: { secret: ref.name, key: ref.key } };
  }
  for (const m of c.volumeMounts ?? []) {
    if (!e.value?.startsWith(m.mountPath + '/')) continue;
    const v = pod.volumes?.find((x) => x['name'] === m.name)?.['secret'] as
      { secretName: string; items: Array<{ key: string; path: string }> } | undefined;
    const item = v?.items.find((i) => join(m.mountPath, i.path) === e.value);
    if (v && item) {
      exists({ secret: v.secretName, key: item.key });
      return { file: { secret: v.secretName, key: item.key } };
    }
  }
  throw new Error(`${name}=${e.value} is neither a secret value nor a mounted secret file`);
}

/** Every document is a Kubernetes object: apiVersion, kind, a DNS-1123 name, the chart's labels. */
function expectKubernetesObjects(objs: K8sObject[]): void {
  expect(objs.length).toBeGreaterThan(0);
  const seen = new Set<string>();
  for (const o of objs) {
    expect(o.apiVersion, JSON.stringify(o).slice(0, 200)).toMatch(/^([a-z0-9.-]+\/)?v[0-9]+((alpha|beta)[0-9]+)?$/);
    expect(o.kind).toMatch(/^[A-Z][A-Za-z]+$/);
    expect(o.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/);
    expect(o.metadata.labels?.['app.kubernetes.io/instance']).toBe('polytune');
    expect(o.metadata.labels?.['app.kubernetes.io/managed-by']).toBe('Helm');
    const key = `${o.apiVersion}/${o.kind}/${o.metadata.name}`;
    expect(seen.has(key), `duplicate ${key}`).toBe(false);
    seen.add(key);
  }
}

function expectHardened(pod: PodSpec): void {
  expect(pod.securityContext).toMatchObject({
    runAsNonRoot: true,
    runAsUser: 1000,
    seccompProfile: { type: 'RuntimeDefault' },
  });
  expect(pod.securityContext['runAsUser']).not.toBe(0);
  for (const c of pod.containers) {
    expect(c.securityContext).toMatchObject({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ['ALL'] },
    });
    // A read-only root needs a writable /tmp.
    expect(c.volumeMounts?.some((m) => m.mountPath === '/tmp')).toBe(true);
  }
}

describe.skipIf(skip !== undefined)('helm/polytune', () => {
  const renderer = bin as string;

  describe('default values', () => {
    const objs = skip ? [] : render(renderer, NATS_AUTH);

    it(
      'renders Kubernetes objects: coordinator, workers, services, volume, ' +
        'dashboard, the secure defaults; no operator objects without the CRDs',
      () => {
        expectKubernetesObjects(objs);
        expect(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
          'ConfigMap/polytune-dashboard',
          'Deployment/polytune-coordinator',
          'NetworkPolicy/polytune-coordinator',
          'NetworkPolicy/polytune-nats',
          'NetworkPolicy/polytune-worker',
          'PersistentVolumeClaim/polytune-data',
          'PodDisruptionBudget/polytune-worker',
          'Secret/polytune-auth',
          'Service/polytune-coordinator',
          'Service/polytune-worker',
          'ServiceAccount/polytune',
          'StatefulSet/polytune-worker',
        ]);
      },
    );

    it('workers request and are limited to one nvidia.com/gpu per worker process, on the GPU image', () => {
      const sts = workload(objs, 'StatefulSet', '-worker');
      expect(sts.spec.replicas).toBe(2);
      const c = sts.spec.template.spec.containers[0]!;
      expect(c.resources.limits?.['nvidia.com/gpu']).toBe(1);
      expect(c.resources.requests?.['nvidia.com/gpu']).toBe(1);
      expect(c.image).toBe('ghcr.io/polytune/polytune-worker-gpu:0.1.0');
      expect(c.args).toEqual([
        '--coordinator',
        'polytune-coordinator.default.svc:7070',
        '--nats',
        'nats://polytune-nats.default.svc:4222',
        '--backend',
        'tensorflow',
      ]);
      expect(c.env?.find((e) => e.name === 'POLYTUNE_WORKER_GPUS')?.value).toBe('1');
      expect(sts.spec.template.spec.tolerations).toEqual([
        { key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' },
      ]);
      expect(sts.spec.template.spec.volumes?.find((v) => v['name'] === 'dshm')).toMatchObject({
        emptyDir: { medium: 'Memory' },
      });
    });

    it(
      'probes: the coordinator is ready when gRPC accepts, alive while /healthz answers; ' +
        'workers start on /healthz of metrics-0, then live on their heartbeat files',
      () => {
        const c = workload(objs, 'Deployment', '-coordinator').spec.template.spec.containers[0]!;
        expect(c.startupProbe?.tcpSocket?.port).toBe('grpc');
        expect(c.readinessProbe?.tcpSocket?.port).toBe('grpc');
        expect(c.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
        expect(c.ports).toEqual([
          { name: 'grpc', containerPort: 7070, protocol: 'TCP' },
          { name: 'metrics', containerPort: 9464, protocol: 'TCP' },
        ]);
        expect(c.args).toEqual([
          'serve',
          '--listen',
          '0.0.0.0:7070',
          '--nats',
          'nats://polytune-nats.default.svc:4222',
          '--metrics-port',
          '9464',
        ]);
        const w = workload(objs, 'StatefulSet', '-worker').spec.template.spec.containers[0]!;
        expect(w.startupProbe?.httpGet).toEqual({ path: '/healthz', port: 'metrics-0' });
        for (const p of [w.readinessProbe, w.livenessProbe])
          expect(p?.exec?.command.join(' ')).toMatch(/^sh -c .*\/tmp\/heartbeat\/\*\.heartbeat/);
        expect(w.ports).toEqual([{ name: 'metrics-0', containerPort: 9465, protocol: 'TCP' }]);
      },
    );

    it('every pod runs as non-root with a read-only root, no privilege escalation and no capabilities', () => {
      expectHardened(workload(objs, 'Deployment', '-coordinator').spec.template.spec);
      expectHardened(workload(objs, 'StatefulSet', '-worker').spec.template.spec);
    });

    it('the shared volume is ReadWriteMany, kept on uninstall, and mounted by the coordinator and every worker', () => {
      const pvc = find(objs, 'PersistentVolumeClaim') as K8sObject & {
        spec: { accessModes: string[]; resources: { requests: { storage: string } } };
      };
      expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
      expect(pvc.metadata.annotations?.['helm.sh/resource-policy']).toBe('keep');
      for (const w of [workload(objs, 'Deployment', '-coordinator'), workload(objs, 'StatefulSet', '-worker')]) {
        expect(w.spec.template.spec.containers[0]!.volumeMounts).toContainEqual({ name: 'data', mountPath: '/data' });
      }
    });

    it('the Grafana dashboard ConfigMap carries the sidecar label and deploy/grafana/polytune.json', () => {
      const cm = find(objs, 'ConfigMap', '-dashboard');
      expect(cm.metadata.labels?.['grafana_dashboard']).toBe('1');
      expect(JSON.parse(cm.data!['polytune.json']!)).toEqual(
        JSON.parse(readFileSync(join(ROOT, 'deploy/grafana/polytune.json'), 'utf8')),
      );
    });
  });

  describe('the NATS dependency', () => {
    it('is the official chart, pinned (1.3.x), behind nats.enabled; not vendored here, which the renderer says', () => {
      const chart = parseYaml(readFileSync(join(CHART, 'Chart.yaml'), 'utf8')) as {
        dependencies: Array<Record<string, string>>;
      };
      expect(chart.dependencies).toEqual([
        {
          name: 'nats',
          version: expect.stringMatching(/^\d+\.\d+\.\d+$/),
          repository: 'https://nats-io.github.io/k8s/helm/charts/',
          condition: 'nats.enabled',
        },
      ]);
      expect(runRender(renderer, []).stderr).toContain('dependency "nats" is not vendored');
    });

    it('gets JetStream on a file store, max_payload raised through config.merge, its Prometheus exporter on', () => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const nats = mergedValues(renderer)['nats'] as Record<string, any>;
      expect(nats['enabled']).toBe(true);
      expect(nats['config'].jetstream).toMatchObject({
        enabled: true,
        fileStore: { enabled: true, dir: '/data', pvc: { enabled: true } },
      });
      // Gradient chunks fill the server's max_payload (worker/collective): 8 MiB, above NATS' 1 MiB default.
      expect(nats['config'].merge.max_payload).toBe(8 * 1024 * 1024);
      expect(nats['config'].cluster).toMatchObject({ enabled: true, replicas: 3 });
      expect(nats['promExporter']).toMatchObject({ enabled: true });
    });

    it('an external NATS replaces it; without its URL rendering fails and says why', () => {
      const objs = render(renderer, [
        '--set',
        'nats.enabled=false',
        '--set',
        'externalNats.url=nats://nats.infra:4222',
        '--set',
        'natsAuth.existingSecret=x',
      ]);
      const c = workload(objs, 'Deployment', '-coordinator').spec.template.spec.containers[0]!;
      expect(c.args).toContain('nats://nats.infra:4222');
      const r = runRender(renderer, ['--set', 'nats.enabled=false', '--set', 'natsAuth.existingSecret=x']);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('externalNats.url is required when nats.enabled is false');
    });
  });

  describe('every option on', () => {
    const objs = skip ? [] : render(renderer, ['-f', ALL_ON, ...OPERATOR_APIS]);
    const sts = (): Workload => workload(objs, 'StatefulSet', '-worker');

    it('renders Kubernetes objects, the operator ones included', () => {
      expectKubernetesObjects(objs);
      const kinds = objs.map((o) => o.kind).sort();
      for (const k of [
        'Ingress',
        'NetworkPolicy',
        'PodGroup',
        'PodMonitor',
        'PrometheusRule',
        'Secret',
        'ServiceMonitor',
      ])
        expect(kinds).toContain(k);
      expect(kinds.filter((k) => k === 'Secret')).toHaveLength(4);
      expect(kinds.filter((k) => k === 'NetworkPolicy')).toHaveLength(3);
    });

    it('8 GPUs a pod: 8 processes, GPU limits of 8, metrics ports 9465..9472 scraped by the PodMonitor', () => {
      const c = sts().spec.template.spec.containers[0]!;
      expect(c.resources.limits).toEqual({ memory: '64Gi', 'nvidia.com/gpu': 8 });
      expect(c.resources.requests).toEqual({ cpu: '4', memory: '32Gi', 'nvidia.com/gpu': 8 });
      expect(c.env?.find((e) => e.name === 'POLYTUNE_WORKER_PROCESSES')?.value).toBe('8');
      expect(c.ports?.map((p) => [p.name, p.containerPort])).toEqual(
        Array.from({ length: 8 }, (_, i) => [`metrics-${i}`, 9465 + i]),
      );
      const pm = find(objs, 'PodMonitor') as K8sObject & { spec: { podMetricsEndpoints: Array<{ port: string }> } };
      expect(pm.spec.podMetricsEndpoints.map((e) => e.port)).toEqual(
        Array.from({ length: 8 }, (_, i) => `metrics-${i}`),
      );
      expect(pm.metadata.labels?.['release']).toBe('kube-prometheus-stack');
      expect(c.image).toBe('registry.example.com/ml/polytune-worker-gpu:1.2.3');
    });

    it('nodeSelector, tolerations and affinity come from values', () => {
      const pod = sts().spec.template.spec;
      expect(pod.nodeSelector).toEqual({ 'nvidia.com/gpu.product': 'NVIDIA-A100-SXM4-80GB' });
      expect(pod.tolerations).toHaveLength(2);
      expect(pod.affinity).toMatchObject({
        podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100 }] },
      });
      expect(pod.imagePullSecrets).toEqual([{ name: 'regcred' }]);
    });

    it('Volcano gang scheduling: a PodGroup of all worker pods and their GPUs, the pods in it', () => {
      const pg = find(objs, 'PodGroup') as K8sObject & { spec: Record<string, unknown> };
      expect(pg.apiVersion).toBe('scheduling.volcano.sh/v1beta1');
      expect(pg.spec).toEqual({ minMember: 4, queue: 'default', minResources: { 'nvidia.com/gpu': '32' } });
      expect(sts().spec.template.spec.schedulerName).toBe('volcano');
      expect(sts().spec.template.metadata.annotations).toEqual({
        'example.com/team': 'nlp',
        'scheduling.k8s.io/group-name': pg.metadata.name,
      });
    });

    it(
      'secrets: the coordinator gets both tokens, its certificate, ' +
        'the client CA, its NATS credentials and the signing key',
      () => {
        const pod = workload(objs, 'Deployment', '-coordinator').spec.template.spec;
        const c = pod.containers[0]!;
        expect(securityEnv(c)).toEqual(CODE_ENV.serve);
        expect(envSource(objs, pod, c, 'POLYTUNE_TOKEN')).toEqual({ value: { secret: 'polytune-auth', key: 'token' } });
        expect(envSource(objs, pod, c, 'POLYTUNE_WORKER_TOKEN')).toEqual({
          value: { secret: 'polytune-auth', key: 'worker-token' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_TLS_CERT')).toEqual({
          file: { secret: 'polytune-tls', key: 'tls.crt' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_TLS_KEY')).toEqual({
          file: { secret: 'polytune-tls', key: 'tls.key' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_TLS_CLIENT_CA')).toEqual({
          file: { secret: 'polytune-tls-worker', key: 'ca.crt' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_NATS_CREDS')).toEqual({
          file: { secret: 'polytune-nats-auth', key: 'coordinator.creds' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_NATS_ACCOUNT_SIGNING_KEY')).toEqual({
          file: { secret: 'polytune-nats-auth', key: 'account-signing-key.nk' },
        });
        // --nats-account takes the public key itself, not a file.
        expect(envSource(objs, pod, c, 'POLYTUNE_NATS_ACCOUNT')).toEqual({
          value: { secret: 'polytune-nats-auth', key: 'account.pub' },
        });
        expect(c.env?.find((e) => e.name === 'POLYTUNE_NATS_CREDS_TTL')?.value).toBe('3600');
        // Revocation: the system user, the account JWT and the operator signing key, as files.
        expect(envSource(objs, pod, c, 'POLYTUNE_NATS_SYSTEM_CREDS')).toEqual({
          file: { secret: 'polytune-nats-auth', key: 'system.creds' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_NATS_ACCOUNT_JWT')).toEqual({
          file: { secret: 'polytune-nats-auth', key: 'account.jwt' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_NATS_OPERATOR_SIGNING_KEY')).toEqual({
          file: { secret: 'polytune-nats-auth', key: 'operator-signing-key.nk' },
        });
        // The workers' client certificate and key stay with the workers.
        expect(mountedSecretKeys(pod, c)).not.toContainEqual({ secret: 'polytune-tls-worker', key: 'tls.key' });
        for (const m of c.volumeMounts ?? [])
          if (m.mountPath.startsWith('/etc/polytune')) expect(m).toMatchObject({ readOnly: true });
        expectHardened(pod);
      },
    );

    it(
      "secrets: workers get the worker token, the CA and name of the coordinator's certificate and " +
        "their client certificate; never the client token, NATS credentials or the coordinator's key",
      () => {
        const pod = sts().spec.template.spec;
        const c = pod.containers[0]!;
        expect(securityEnv(c)).toEqual(CODE_ENV.worker);
        const names = (c.env ?? []).map((e) => e.name);
        expect(names).not.toContain('POLYTUNE_TOKEN');
        expect(names.filter((n) => n.startsWith('POLYTUNE_NATS_'))).toEqual(['POLYTUNE_NATS_URL']);
        expect(envSource(objs, pod, c, 'POLYTUNE_WORKER_TOKEN')).toEqual({
          value: { secret: 'polytune-auth', key: 'worker-token' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_TLS_CA')).toEqual({ file: { secret: 'polytune-tls', key: 'ca.crt' } });
        expect(envSource(objs, pod, c, 'POLYTUNE_TLS_CLIENT_CERT')).toEqual({
          file: { secret: 'polytune-tls-worker', key: 'tls.crt' },
        });
        expect(envSource(objs, pod, c, 'POLYTUNE_TLS_CLIENT_KEY')).toEqual({
          file: { secret: 'polytune-tls-worker', key: 'tls.key' },
        });
        expect(c.env?.find((e) => e.name === 'POLYTUNE_TLS_SERVER_NAME')?.value).toBe(
          'polytune-coordinator.default.svc',
        );
        // Nothing of the client token's, the NATS account's or the coordinator's private key is mounted.
        expect(mountedSecretKeys(pod, c)).toEqual([
          { secret: 'polytune-tls', key: 'ca.crt' },
          { secret: 'polytune-tls-worker', key: 'tls.crt' },
          { secret: 'polytune-tls-worker', key: 'tls.key' },
        ]);
        expect(JSON.stringify(pod)).not.toContain('polytune-nats-auth');
        expectHardened(pod);
      },
    );

    it('secrets: inline values become Secrets with exactly the keys the pods reference', () => {
      const data = (name: string): Record<string, string> =>
        Object.fromEntries(
          Object.entries(find(objs, 'Secret', name).data!).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]),
        );
      expect(data('-auth')).toEqual({ token: 'client-token-0123456789', 'worker-token': 'worker-token-0123456789' });
      expect(data('-tls')).toEqual({ 'tls.crt': 'CERT', 'tls.key': 'KEY', 'ca.crt': 'CA' });
      expect(data('-tls-worker')).toEqual({ 'tls.crt': 'WORKER-CERT', 'tls.key': 'WORKER-KEY', 'ca.crt': 'WORKER-CA' });
      expect(Object.keys(data('-nats-auth')).sort()).toEqual([
        'account-signing-key.nk',
        'account.jwt',
        'account.pub',
        'coordinator.creds',
        'operator-signing-key.nk',
        'system.creds',
      ]);
      expect((find(objs, 'Secret', '-tls') as K8sObject & { type: string }).type).toBe('kubernetes.io/tls');
    });

    it('every POLYTUNE_* variable the chart sets is one the code reads', () => {
      const sources = [
        ...walk(join(ROOT, 'coordinator')),
        ...walk(join(ROOT, 'worker')),
        ...walk(join(ROOT, 'common')),
        join(ROOT, 'deploy/worker-launch.sh'),
      ]
        .map((f) => readFileSync(f, 'utf8'))
        .join('\n');
      for (const w of [workload(objs, 'Deployment', '-coordinator'), sts()]) {
        for (const e of w.spec.template.spec.containers[0]!.env ?? []) {
          if (e.name.startsWith('POLYTUNE_'))
            expect(sources, `${w.kind} sets ${e.name}, which no code reads`).toMatch(new RegExp(`\\b${e.name}\\b`));
        }
      }
    });

    it('with TLS on, the ingress speaks GRPCS to the coordinator', () => {
      expect(find(objs, 'Ingress').metadata.annotations?.['nginx.ingress.kubernetes.io/backend-protocol']).toBe(
        'GRPCS',
      );
    });

    it('the PrometheusRule is deploy/prometheus/rules.yaml; the ServiceMonitor scrapes the coordinator', () => {
      const rule = find(objs, 'PrometheusRule');
      expect(rule.spec).toEqual(parseYaml(readFileSync(join(ROOT, 'deploy/prometheus/rules.yaml'), 'utf8')));
      const sm = find(objs, 'ServiceMonitor') as K8sObject & {
        spec: { endpoints: Array<{ port: string }>; selector: { matchLabels: Record<string, string> } };
      };
      expect(sm.spec.endpoints.map((e) => e.port)).toEqual(['metrics']);
      expect(sm.spec.selector.matchLabels['app.kubernetes.io/component']).toBe('coordinator');
    });

    it(
      'the ingress speaks gRPC to the coordinator; the NetworkPolicy ' +
        'lets in workers, the listed clients and Prometheus',
      () => {
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        const ing = find(objs, 'Ingress') as K8sObject & { spec: Record<string, any> };
        expect(ing.spec['rules'][0].http.paths[0].backend.service).toEqual({
          name: 'polytune-coordinator',
          port: { name: 'grpc' },
        });
        const np = find(objs, 'NetworkPolicy', '-coordinator') as K8sObject & {
          spec: { ingress: Array<{ from: Array<Record<string, unknown>> }> };
        };
        expect(np.spec.ingress[0]!.from).toContainEqual({ ipBlock: { cidr: '10.0.0.0/8' } });
        expect(np.spec.ingress[0]!.from[0]).toHaveProperty('podSelector');
        expect(np.spec.ingress[1]!.from).toEqual([
          { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } },
        ]);
      },
    );
  });

  describe('other choices', () => {
    it('CPU workers: the CPU image, no GPU resources, wasm backend', () => {
      const objs = render(renderer, [
        ...NATS_AUTH,
        '--set',
        'worker.gpu.enabled=false',
        '--set',
        'worker.backend=wasm',
        '--set',
        'worker.processesPerPod=4',
        '--set',
        'worker.tolerations=null',
      ]);
      const c = workload(objs, 'StatefulSet', '-worker').spec.template.spec.containers[0]!;
      expect(c.image).toBe('ghcr.io/polytune/polytune-worker-cpu:0.1.0');
      expect(JSON.stringify(c.resources)).not.toContain('nvidia.com/gpu');
      expect(c.env?.find((e) => e.name === 'POLYTUNE_WORKER_GPUS')?.value).toBe('0');
      expect(c.args).toContain('wasm');
    });

    it(
      'Kueue: only the queue label on the StatefulSet (Kueue sets ' +
        'the pod group itself); without a queue name rendering fails',
      () => {
        const objs = render(renderer, [
          ...NATS_AUTH,
          '--set',
          'gangScheduling.mode=kueue',
          '--set',
          'gangScheduling.kueue.queueName=gpu-queue',
        ]);
        const s = workload(objs, 'StatefulSet', '-worker');
        expect(s.metadata.labels?.['kueue.x-k8s.io/queue-name']).toBe('gpu-queue');
        expect(JSON.stringify(objs).match(/kueue\.x-k8s\.io\/[a-z-]+/g)).toEqual(['kueue.x-k8s.io/queue-name']);
        expect(s.spec.template.metadata.annotations).toBeUndefined();
        const r = runRender(renderer, [...NATS_AUTH, '--set', 'gangScheduling.mode=kueue']);
        expect(r.status).not.toBe(0);
        expect(r.stderr).toContain('gangScheduling.kueue.queueName is required');
      },
    );

    it('the code reads the security env vars the README lists (the test greps them out of the code)', () => {
      expect(CODE_ENV.serve).toEqual([
        'POLYTUNE_NATS_ACCOUNT',
        'POLYTUNE_NATS_ACCOUNT_JWT',
        'POLYTUNE_NATS_ACCOUNT_SIGNING_KEY',
        'POLYTUNE_NATS_CREDS',
        'POLYTUNE_NATS_CREDS_TTL',
        'POLYTUNE_NATS_OPERATOR_SIGNING_KEY',
        'POLYTUNE_NATS_SYSTEM_CREDS',
        'POLYTUNE_TLS_CERT',
        'POLYTUNE_TLS_CLIENT_CA',
        'POLYTUNE_TLS_KEY',
        'POLYTUNE_TOKEN',
        'POLYTUNE_WORKER_TOKEN',
      ]);
      expect(CODE_ENV.worker).toEqual([
        'POLYTUNE_TLS_CA',
        'POLYTUNE_TLS_CLIENT_CERT',
        'POLYTUNE_TLS_CLIENT_KEY',
        'POLYTUNE_TLS_SERVER_NAME',
        'POLYTUNE_WORKER_TOKEN',
      ]);
      const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
      for (const n of SECURITY_ENV) expect(readme).toContain(`\`${n}\``);
    });

    it(
      'security off (auth.enabled and natsAuth.enabled false): no ' +
        'secrets, no security env, the ingress speaks plain GRPC',
      () => {
        const objs = render(renderer, [
          '--set',
          'ingress.enabled=true',
          '--set',
          'auth.enabled=false',
          '--set',
          'natsAuth.enabled=false',
        ]);
        expect(objs.filter((o) => o.kind === 'Secret')).toEqual([]);
        for (const w of [workload(objs, 'Deployment', '-coordinator'), workload(objs, 'StatefulSet', '-worker')])
          expect(securityEnv(w.spec.template.spec.containers[0]!)).toEqual([]);
        expect(find(objs, 'Ingress').metadata.annotations?.['nginx.ingress.kubernetes.io/backend-protocol']).toBe(
          'GRPC',
        );
      },
    );

    it('existing Secrets: referenced under their names with the documented keys, none rendered', () => {
      const objs = render(renderer, [
        '--set',
        'auth.existingSecret=my-tokens',
        '--set',
        'tls.enabled=true',
        '--set',
        'tls.existingSecret=my-tls',
        '--set',
        'tls.mutual.enabled=true',
        '--set',
        'tls.mutual.existingSecret=my-worker-tls',
        '--set',
        'tls.serverName=coordinator.example.com',
        '--set',
        'natsAuth.enabled=true',
        '--set',
        'natsAuth.existingSecret=my-nats',
        '--set',
        'nats.config.merge.$include=auth/nats-auth.conf',
      ]);
      expect(objs.filter((o) => o.kind === 'Secret')).toEqual([]);
      const coord = workload(objs, 'Deployment', '-coordinator').spec.template.spec;
      const worker = workload(objs, 'StatefulSet', '-worker').spec.template.spec;
      const c = coord.containers[0]!;
      const w = worker.containers[0]!;
      expect(securityEnv(c)).toEqual(CODE_ENV.serve);
      expect(securityEnv(w)).toEqual(CODE_ENV.worker);
      expect(c.env?.find((e) => e.name === 'POLYTUNE_TOKEN')?.valueFrom).toEqual({
        secretKeyRef: { name: 'my-tokens', key: 'token' },
      });
      expect(w.env?.find((e) => e.name === 'POLYTUNE_WORKER_TOKEN')?.valueFrom).toEqual({
        secretKeyRef: { name: 'my-tokens', key: 'worker-token' },
      });
      expect(c.env?.find((e) => e.name === 'POLYTUNE_NATS_ACCOUNT')?.valueFrom).toEqual({
        secretKeyRef: { name: 'my-nats', key: 'account.pub' },
      });
      expect(mountedSecretKeys(coord, c)).toEqual([
        { secret: 'my-tls', key: 'tls.crt' },
        { secret: 'my-tls', key: 'tls.key' },
        { secret: 'my-worker-tls', key: 'ca.crt' },
        { secret: 'my-nats', key: 'coordinator.creds' },
        { secret: 'my-nats', key: 'account-signing-key.nk' },
        { secret: 'my-nats', key: 'system.creds' },
        { secret: 'my-nats', key: 'account.jwt' },
        { secret: 'my-nats', key: 'operator-signing-key.nk' },
      ]);
      expect(mountedSecretKeys(worker, w)).toEqual([
        { secret: 'my-tls', key: 'ca.crt' },
        { secret: 'my-worker-tls', key: 'tls.crt' },
        { secret: 'my-worker-tls', key: 'tls.key' },
      ]);
      expect(w.env?.find((e) => e.name === 'POLYTUNE_TLS_SERVER_NAME')?.value).toBe('coordinator.example.com');
    });

    const refused: Array<[string, string[], string]> = [
      [
        'a client token without a worker token',
        [...NATS_AUTH, '--set', 'auth.token=client-token-0123456789'],
        'auth.workerToken is required with auth.token',
      ],
      [
        'a worker token without a client token',
        [...NATS_AUTH, '--set', 'auth.workerToken=worker-token-0123456789'],
        'auth.token is required with auth.workerToken',
      ],
      [
        'the same token twice',
        [...NATS_AUTH, '--set', 'auth.token=same-token-0123456789', '--set', 'auth.workerToken=same-token-0123456789'],
        'auth.workerToken must differ from auth.token',
      ],
      [
        'mutual TLS without TLS',
        [...NATS_AUTH, '--set', 'tls.mutual.enabled=true'],
        'tls.mutual.enabled needs tls.enabled',
      ],
      [
        'TLS without the CA the workers need',
        [...NATS_AUTH, '--set', 'tls.enabled=true', '--set', 'tls.cert=C', '--set', 'tls.key=K'],
        'tls.ca is required',
      ],
      [
        'NATS credentials for a NATS server not in operator mode',
        ['--set', 'natsAuth.enabled=true', '--set', 'natsAuth.existingSecret=x'],
        'the NATS server is not in operator mode',
      ],
      [
        'an operator-mode NATS server without credentials for the coordinator',
        ['--set', 'natsAuth.enabled=false', '--set', 'nats.config.merge.operator=eyJ'],
        'set natsAuth',
      ],
      [
        'the default install without NATS credentials',
        [],
        'natsAuth is on by default and needs credentials: run `coordinator nats-auth init --out DIR`',
      ],
      [
        'NATS credentials without the signing key',
        [
          '--set',
          'natsAuth.enabled=true',
          '--set',
          'natsAuth.coordinatorCreds=x',
          '--set',
          'natsAuth.account=A',
          '--set',
          'nats.config.merge.operator=eyJ',
        ],
        'natsAuth.accountSigningKey is required',
      ],
    ];
    it.each(refused)('refuses %s, saying why', (_what, args, message) => {
      const r = runRender(renderer, args);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(message);
    });

    it('TLS on without a certificate fails with the value to set', () => {
      const r = runRender(renderer, [...NATS_AUTH, '--set', 'tls.enabled=true']);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('tls.cert is required');
    });
  });

  it("the chart's copies of the dashboard and the rules are the files under deploy/", () => {
    expect(readFileSync(join(CHART, 'files/polytune.json'), 'utf8')).toBe(
      readFileSync(join(ROOT, 'deploy/grafana/polytune.json'), 'utf8'),
    );
    expect(readFileSync(join(CHART, 'files/rules.yaml'), 'utf8')).toBe(
      readFileSync(join(ROOT, 'deploy/prometheus/rules.yaml'), 'utf8'),
    );
  });
});
