/**
 * helm/polytune renders, with default values and with every option on, into manifests that parse
 * as Kubernetes objects; what matters in them is asserted. Rendering is done by tools/helm-render
 * (Helm's engine: Go text/template + sprig), a test-only stand-in for `helm template`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { CHART, ROOT, helmRender, mergedValues, render, runRender, type K8sObject } from './helm-render.js';

const bin = helmRender();
const skip = typeof bin === 'string' ? undefined : bin.skip;
if (skip) console.warn(`chart: ${skip}`);
const ALL_ON = join(ROOT, 'test', 'deploy', 'fixtures', 'values-all-on.yaml');
const OPERATOR_APIS = ['--api-versions', 'monitoring.coreos.com/v1', '--api-versions', 'scheduling.volcano.sh/v1beta1'];

type Container = {
  name: string; image: string; args?: string[]; command?: string[]; env?: Array<{ name: string; value?: string; valueFrom?: unknown }>;
  ports?: Array<{ name: string; containerPort: number }>; resources: { requests?: Record<string, unknown>; limits?: Record<string, unknown> };
  securityContext: Record<string, unknown>; startupProbe?: Probe; readinessProbe?: Probe; livenessProbe?: Probe;
  volumeMounts?: Array<{ name: string; mountPath: string }>;
};
type Probe = { httpGet?: { path: string; port: string }; tcpSocket?: { port: string } };
type PodSpec = {
  containers: Container[]; securityContext: Record<string, unknown>; volumes?: Array<Record<string, unknown>>; schedulerName?: string;
  nodeSelector?: Record<string, string>; tolerations?: unknown[]; affinity?: unknown; serviceAccountName?: string; imagePullSecrets?: unknown[];
};
type Workload = K8sObject & { spec: { replicas: number; template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec } } };

const find = (objs: K8sObject[], kind: string, nameSuffix = ''): K8sObject => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name.endsWith(nameSuffix));
  if (!o) throw new Error(`no ${kind} *${nameSuffix} in ${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
};
const workload = (objs: K8sObject[], kind: string, suffix: string): Workload => find(objs, kind, suffix) as Workload;

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
  expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } });
  expect(pod.securityContext['runAsUser']).not.toBe(0);
  for (const c of pod.containers) {
    expect(c.securityContext).toMatchObject({
      allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] },
    });
    // A read-only root needs a writable /tmp.
    expect(c.volumeMounts?.some((m) => m.mountPath === '/tmp')).toBe(true);
  }
}

describe.skipIf(skip !== undefined)('helm/polytune', () => {
  const renderer = bin as string;

  describe('default values', () => {
    const objs = skip ? [] : render(renderer);

    it('renders Kubernetes objects: coordinator, workers, services, volume, dashboard; no operator objects without the CRDs', () => {
      expectKubernetesObjects(objs);
      expect(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
        'ConfigMap/polytune-dashboard', 'Deployment/polytune-coordinator', 'PersistentVolumeClaim/polytune-data',
        'Service/polytune-coordinator', 'Service/polytune-worker', 'ServiceAccount/polytune', 'StatefulSet/polytune-worker',
      ]);
    });

    it('workers request and are limited to one nvidia.com/gpu per worker process, on the GPU image', () => {
      const sts = workload(objs, 'StatefulSet', '-worker');
      expect(sts.spec.replicas).toBe(2);
      const c = sts.spec.template.spec.containers[0]!;
      expect(c.resources.limits?.['nvidia.com/gpu']).toBe(1);
      expect(c.resources.requests?.['nvidia.com/gpu']).toBe(1);
      expect(c.image).toBe('ghcr.io/polytune/polytune-worker-gpu:0.1.0');
      expect(c.args).toEqual(['--coordinator', 'polytune-coordinator.default.svc:7070', '--nats', 'nats://polytune-nats.default.svc:4222', '--backend', 'tensorflow']);
      expect(c.env?.find((e) => e.name === 'POLYTUNE_WORKER_GPUS')?.value).toBe('1');
      expect(sts.spec.template.spec.tolerations).toEqual([{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
      expect(sts.spec.template.spec.volumes?.find((v) => v['name'] === 'dshm')).toMatchObject({ emptyDir: { medium: 'Memory' } });
    });

    it('probes: the coordinator is ready when gRPC accepts, alive while /healthz answers; workers on /healthz of metrics-0', () => {
      const c = workload(objs, 'Deployment', '-coordinator').spec.template.spec.containers[0]!;
      expect(c.startupProbe?.tcpSocket?.port).toBe('grpc');
      expect(c.readinessProbe?.tcpSocket?.port).toBe('grpc');
      expect(c.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
      expect(c.ports).toEqual([{ name: 'grpc', containerPort: 7070, protocol: 'TCP' }, { name: 'metrics', containerPort: 9464, protocol: 'TCP' }]);
      expect(c.args).toEqual(['serve', '--listen', '0.0.0.0:7070', '--nats', 'nats://polytune-nats.default.svc:4222', '--metrics-port', '9464']);
      const w = workload(objs, 'StatefulSet', '-worker').spec.template.spec.containers[0]!;
      for (const p of [w.startupProbe, w.readinessProbe, w.livenessProbe]) expect(p?.httpGet).toEqual({ path: '/healthz', port: 'metrics-0' });
      expect(w.ports).toEqual([{ name: 'metrics-0', containerPort: 9465, protocol: 'TCP' }]);
    });

    it('every pod runs as non-root with a read-only root, no privilege escalation and no capabilities', () => {
      expectHardened(workload(objs, 'Deployment', '-coordinator').spec.template.spec);
      expectHardened(workload(objs, 'StatefulSet', '-worker').spec.template.spec);
    });

    it('the shared volume is ReadWriteMany, kept on uninstall, and mounted by the coordinator and every worker', () => {
      const pvc = find(objs, 'PersistentVolumeClaim') as K8sObject & { spec: { accessModes: string[]; resources: { requests: { storage: string } } } };
      expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
      expect(pvc.metadata.annotations?.['helm.sh/resource-policy']).toBe('keep');
      for (const w of [workload(objs, 'Deployment', '-coordinator'), workload(objs, 'StatefulSet', '-worker')]) {
        expect(w.spec.template.spec.containers[0]!.volumeMounts).toContainEqual({ name: 'data', mountPath: '/data' });
      }
    });

    it('the Grafana dashboard ConfigMap carries the sidecar label and deploy/grafana/polytune.json', () => {
      const cm = find(objs, 'ConfigMap', '-dashboard');
      expect(cm.metadata.labels?.['grafana_dashboard']).toBe('1');
      expect(JSON.parse(cm.data!['polytune.json']!)).toEqual(JSON.parse(readFileSync(join(ROOT, 'deploy/grafana/polytune.json'), 'utf8')));
    });
  });

  describe('the NATS dependency', () => {
    it('is the official chart, pinned, behind nats.enabled; not vendored here, which the renderer says', () => {
      const chart = parseYaml(readFileSync(join(CHART, 'Chart.yaml'), 'utf8')) as { dependencies: Array<Record<string, string>> };
      expect(chart.dependencies).toEqual([{ name: 'nats', version: expect.stringMatching(/^\d+\.\d+\.\d+$/), repository: 'https://nats-io.github.io/k8s/helm/charts/', condition: 'nats.enabled' }]);
      expect(runRender(renderer, []).stderr).toContain('dependency "nats" is not vendored');
    });

    it('gets JetStream on a file store, max_payload raised through config.merge, its Prometheus exporter on', () => {
      const nats = mergedValues(renderer)['nats'] as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
      expect(nats['enabled']).toBe(true);
      expect(nats['config'].jetstream).toMatchObject({ enabled: true, fileStore: { enabled: true, dir: '/data', pvc: { enabled: true } } });
      // Gradient chunks fill the server's max_payload (worker/collective): 8 MiB, above NATS' 1 MiB default.
      expect(nats['config'].merge.max_payload).toBe(8 * 1024 * 1024);
      expect(nats['config'].cluster).toMatchObject({ enabled: true, replicas: 3 });
      expect(nats['promExporter']).toMatchObject({ enabled: true });
    });

    it('an external NATS replaces it; without its URL rendering fails and says why', () => {
      const objs = render(renderer, ['--set', 'nats.enabled=false', '--set', 'externalNats.url=nats://nats.infra:4222']);
      const c = workload(objs, 'Deployment', '-coordinator').spec.template.spec.containers[0]!;
      expect(c.args).toContain('nats://nats.infra:4222');
      const r = runRender(renderer, ['--set', 'nats.enabled=false']);
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
      for (const k of ['Ingress', 'NetworkPolicy', 'PodGroup', 'PodMonitor', 'PrometheusRule', 'Secret', 'ServiceMonitor']) expect(kinds).toContain(k);
      expect(kinds.filter((k) => k === 'Secret')).toHaveLength(3);
      expect(kinds.filter((k) => k === 'NetworkPolicy')).toHaveLength(2);
    });

    it('8 GPUs a pod: 8 processes, GPU limits of 8, metrics ports 9465..9472 scraped by the PodMonitor', () => {
      const c = sts().spec.template.spec.containers[0]!;
      expect(c.resources.limits).toEqual({ memory: '64Gi', 'nvidia.com/gpu': 8 });
      expect(c.resources.requests).toEqual({ cpu: '4', memory: '32Gi', 'nvidia.com/gpu': 8 });
      expect(c.env?.find((e) => e.name === 'POLYTUNE_WORKER_PROCESSES')?.value).toBe('8');
      expect(c.ports?.map((p) => [p.name, p.containerPort])).toEqual(Array.from({ length: 8 }, (_, i) => [`metrics-${i}`, 9465 + i]));
      const pm = find(objs, 'PodMonitor') as K8sObject & { spec: { podMetricsEndpoints: Array<{ port: string }> } };
      expect(pm.spec.podMetricsEndpoints.map((e) => e.port)).toEqual(Array.from({ length: 8 }, (_, i) => `metrics-${i}`));
      expect(pm.metadata.labels?.['release']).toBe('kube-prometheus-stack');
      expect(c.image).toBe('registry.example.com/ml/polytune-worker-gpu:1.2.3');
    });

    it('nodeSelector, tolerations and affinity come from values', () => {
      const pod = sts().spec.template.spec;
      expect(pod.nodeSelector).toEqual({ 'nvidia.com/gpu.product': 'NVIDIA-A100-SXM4-80GB' });
      expect(pod.tolerations).toHaveLength(2);
      expect(pod.affinity).toMatchObject({ podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100 }] } });
      expect(pod.imagePullSecrets).toEqual([{ name: 'regcred' }]);
    });

    it('Volcano gang scheduling: a PodGroup of all worker pods and their GPUs, the pods in it', () => {
      const pg = find(objs, 'PodGroup') as K8sObject & { spec: Record<string, unknown> };
      expect(pg.apiVersion).toBe('scheduling.volcano.sh/v1beta1');
      expect(pg.spec).toEqual({ minMember: 4, queue: 'default', minResources: { 'nvidia.com/gpu': '32' } });
      expect(sts().spec.template.spec.schedulerName).toBe('volcano');
      expect(sts().spec.template.metadata.annotations).toEqual({ 'example.com/team': 'nlp', 'scheduling.k8s.io/group-name': pg.metadata.name });
    });

    it('secrets: the token as env, TLS and NATS credentials mounted read-only; still hardened', () => {
      const pod = workload(objs, 'Deployment', '-coordinator').spec.template.spec;
      const c = pod.containers[0]!;
      expect(c.env?.find((e) => e.name === 'POLYTUNE_TOKEN')?.valueFrom).toEqual({ secretKeyRef: { name: 'polytune-auth', key: 'token' } });
      expect(c.volumeMounts).toContainEqual({ name: 'tls', mountPath: '/etc/polytune/tls', readOnly: true });
      expect(c.env?.find((e) => e.name === 'POLYTUNE_TLS_CERT')?.value).toBe('/etc/polytune/tls/tls.crt');
      expect(sts().spec.template.spec.containers[0]!.env?.find((e) => e.name === 'POLYTUNE_TLS_CA')?.value).toBe('/etc/polytune/tls/ca.crt');
      expect(c.volumeMounts).toContainEqual({ name: 'nats-creds', mountPath: '/etc/polytune/nats', readOnly: true });
      const tls = find(objs, 'Secret', '-tls') as K8sObject & { type: string };
      expect(tls.type).toBe('kubernetes.io/tls');
      expect(Buffer.from(tls.data!['tls.crt']!, 'base64').toString()).toBe('CERT');
      expectHardened(pod);
      expectHardened(sts().spec.template.spec);
    });

    it('the PrometheusRule is deploy/prometheus/rules.yaml; the ServiceMonitor scrapes the coordinator', () => {
      const rule = find(objs, 'PrometheusRule');
      expect(rule.spec).toEqual(parseYaml(readFileSync(join(ROOT, 'deploy/prometheus/rules.yaml'), 'utf8')));
      const sm = find(objs, 'ServiceMonitor') as K8sObject & { spec: { endpoints: Array<{ port: string }>; selector: { matchLabels: Record<string, string> } } };
      expect(sm.spec.endpoints.map((e) => e.port)).toEqual(['metrics']);
      expect(sm.spec.selector.matchLabels['app.kubernetes.io/component']).toBe('coordinator');
    });

    it('the ingress speaks gRPC to the coordinator; the NetworkPolicy lets in workers, the listed clients and Prometheus', () => {
      const ing = find(objs, 'Ingress') as K8sObject & { spec: Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
      expect(ing.metadata.annotations?.['nginx.ingress.kubernetes.io/backend-protocol']).toBe('GRPC');
      expect(ing.spec['rules'][0].http.paths[0].backend.service).toEqual({ name: 'polytune-coordinator', port: { name: 'grpc' } });
      const np = find(objs, 'NetworkPolicy', '-coordinator') as K8sObject & { spec: { ingress: Array<{ from: Array<Record<string, unknown>> }> } };
      expect(np.spec.ingress[0]!.from).toContainEqual({ ipBlock: { cidr: '10.0.0.0/8' } });
      expect(np.spec.ingress[0]!.from[0]).toHaveProperty('podSelector');
      expect(np.spec.ingress[1]!.from).toEqual([{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }]);
    });
  });

  describe('other choices', () => {
    it('CPU workers: the CPU image, no GPU resources, wasm backend', () => {
      const objs = render(renderer, ['--set', 'worker.gpu.enabled=false', '--set', 'worker.backend=wasm', '--set', 'worker.processesPerPod=4', '--set', 'worker.tolerations=null']);
      const c = workload(objs, 'StatefulSet', '-worker').spec.template.spec.containers[0]!;
      expect(c.image).toBe('ghcr.io/polytune/polytune-worker-cpu:0.1.0');
      expect(JSON.stringify(c.resources)).not.toContain('nvidia.com/gpu');
      expect(c.env?.find((e) => e.name === 'POLYTUNE_WORKER_GPUS')?.value).toBe('0');
      expect(c.args).toContain('wasm');
    });

    it('Kueue: the queue label on the StatefulSet and a pod group; without a queue name rendering fails', () => {
      const objs = render(renderer, ['--set', 'gangScheduling.mode=kueue', '--set', 'gangScheduling.kueue.queueName=gpu-queue']);
      const s = workload(objs, 'StatefulSet', '-worker');
      expect(s.metadata.labels?.['kueue.x-k8s.io/queue-name']).toBe('gpu-queue');
      expect(s.spec.template.metadata.labels['kueue.x-k8s.io/pod-group-name']).toBe('polytune-workers');
      expect(s.spec.template.metadata.annotations).toEqual({ 'kueue.x-k8s.io/pod-group-total-count': '2' });
      const r = runRender(renderer, ['--set', 'gangScheduling.mode=kueue']);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('gangScheduling.kueue.queueName is required');
    });

    it('TLS on without a certificate fails with the value to set', () => {
      const r = runRender(renderer, ['--set', 'tls.enabled=true']);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('tls.cert is required');
    });
  });

  it('the chart\'s copies of the dashboard and the rules are the files under deploy/', () => {
    expect(readFileSync(join(CHART, 'files/polytune.json'), 'utf8')).toBe(readFileSync(join(ROOT, 'deploy/grafana/polytune.json'), 'utf8'));
    expect(readFileSync(join(CHART, 'files/rules.yaml'), 'utf8')).toBe(readFileSync(join(ROOT, 'deploy/prometheus/rules.yaml'), 'utf8'));
  });
});
