/**
 * Whether the coordinator may use the NATS it is pointed at. Anyone who can reach a NATS without
 * authentication can read and forge gradient chunks and rewrite the job store (issue 20: "controls
 * training and jobs"), so `coordinator serve` refuses one that is reachable from elsewhere:
 *
 * - authenticated: the connection carries credentials (a `.creds` file or another authenticator,
 *   user and password, a token, or a user/token in the URL) or a TLS client certificate: the
 *   server can refuse strangers, so it is the server's configuration that protects it;
 * - loopback: every server URL's host is `localhost`, `127.0.0.0/8` or `::1`: only processes on
 *   this machine reach it (the embedded local cluster, a laptop);
 * - otherwise refused with `InsecureNatsError`, unless the operator says `--insecure-nats`
 *   (`POLYTUNE_INSECURE_NATS=1`), for a network that is trusted by other means.
 *
 * The coordinator cannot see whether the server itself asks for authentication; it decides from
 * what it was told to connect with. A server that asks for none while the coordinator sends
 * credentials is the operator's mistake, not one this check can catch.
 */
import { isIP } from 'node:net';
import type { ConnectionOptions } from '@nats-io/transport-node';
import { UserError } from '../common/errors.js';

export const NatsExposure = { Authenticated: 'authenticated', Loopback: 'loopback', Insecure: 'insecure' } as const;
export type NatsExposure = (typeof NatsExposure)[keyof typeof NatsExposure];

/** Env var that has the effect of `--insecure-nats` (`1`). */
export const INSECURE_NATS_ENV = 'POLYTUNE_INSECURE_NATS';

/** An unauthenticated NATS off loopback, without `--insecure-nats`. A user's mistake (exit 2). */
export class InsecureNatsError extends UserError {
  readonly hosts: readonly string[];
  constructor(natsUrl: string, hosts: readonly string[]) {
    super(
      `refusing to use NATS at ${natsUrl} without authentication: ` +
        `${hosts.join(', ')} ${hosts.length === 1 ? 'is' : 'are'} not ` +
        'loopback, and anyone who reaches it can forge gradients ' +
        'and rewrite jobs. Give the coordinator NATS credentials ' +
        '(--nats-creds, operator mode: `coordinator nats-auth init`) or a TLS client certificate (--nats-tls-cert), ' +
        'or pass --insecure-nats (POLYTUNE_INSECURE_NATS=1) if ' +
        'the network is trusted by other means (README "Security")',
    );
    this.name = 'InsecureNatsError';
    this.hosts = hosts;
  }
}

/** True for `localhost`, `127.0.0.0/8`, `::1` and `::ffff:127.x.y.z`. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  const v4 = h.startsWith('::ffff:') && isIP(h.slice(7)) === 4 ? h.slice(7) : h;
  if (isIP(v4) === 4) return v4.split('.')[0] === '127';
  if (isIP(h) === 6) return /^(0{0,4}:){7}0{0,3}1$/.test(expandV6(h)) || h === '::1';
  return false;
}

function expandV6(h: string): string {
  if (!h.includes('::')) return h;
  const [head, tail] = h.split('::') as [string, string];
  const a = head ? head.split(':') : [];
  const b = tail ? tail.split(':') : [];
  return [...a, ...Array<string>(8 - a.length - b.length).fill('0'), ...b].join(':');
}

export interface NatsServerAddress {
  readonly host: string;
  /** The URL names a user or token (`nats://user:pass@host`, `nats://token@host`). */
  readonly credentialsInUrl: boolean;
}

/** The servers of a NATS URL list (comma-separated, as `--nats` takes it), scheme optional. */
export function natsServerAddresses(natsUrl: string): NatsServerAddress[] {
  return natsUrl
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? s : `nats://${s}`;
      let url: URL;
      try {
        url = new URL(withScheme);
      } catch (e) {
        throw new UserError(`--nats: "${s}" is not a NATS URL`, { cause: e });
      }
      return { host: url.hostname, credentialsInUrl: url.username !== '' || url.password !== '' };
    });
}

/** True when the connection options carry credentials or a TLS client certificate. */
export function connectsWithCredentials(connect: Partial<ConnectionOptions> | undefined): boolean {
  if (!connect) return false;
  if (connect.authenticator !== undefined || connect.token !== undefined || connect.user !== undefined) return true;
  const tls = connect.tls;
  return Boolean(tls && ((tls.cert && tls.key) || tls.certFile));
}

export interface NatsExposureInput {
  /** `--nats`: one URL or several, comma-separated. */
  natsUrl: string;
  /** The coordinator's own connection options (credentials, TLS). */
  connect?: Partial<ConnectionOptions> | undefined;
  /** `--insecure-nats`. */
  insecureNats?: boolean | undefined;
}

/** Decides whether the coordinator may use this NATS; throws `InsecureNatsError` when it may not. */
export function checkNatsExposure(input: NatsExposureInput): NatsExposure {
  const servers = natsServerAddresses(input.natsUrl);
  if (servers.length === 0) throw new UserError('--nats: no server URL given');
  if (connectsWithCredentials(input.connect)) return NatsExposure.Authenticated;
  const open = servers.filter((s) => !s.credentialsInUrl && !isLoopbackHost(s.host)).map((s) => s.host);
  if (open.length === 0)
    return servers.every((s) => s.credentialsInUrl) ? NatsExposure.Authenticated : NatsExposure.Loopback;
  if (input.insecureNats) return NatsExposure.Insecure;
  throw new InsecureNatsError(input.natsUrl, [...new Set(open)]);
}
