/** The decision whether the coordinator may use a NATS (coordinator/nats-exposure.ts), as a pure function. */
import { status } from '@grpc/grpc-js';
import { credsAuthenticator } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { UserError } from '../../common/errors.js';
import { JoinDeadlineError, WorkerIdInUseError } from '../../coordinator/errors.js';
import { toGrpcStatus } from '../../coordinator/grpc-errors.js';
import {
  checkNatsExposure,
  InsecureNatsError,
  isLoopbackHost,
  NatsExposure,
  natsServerAddresses,
} from '../../coordinator/nats-exposure.js';

describe('isLoopbackHost', () => {
  it.each([
    'localhost',
    '127.0.0.1',
    '127.3.2.1',
    '::1',
    '[::1]',
    '0:0:0:0:0:0:0:1',
    '::ffff:127.0.0.1',
    'nats.localhost',
  ])('%s is loopback', (h) => {
    expect(isLoopbackHost(h)).toBe(true);
  });
  it.each([
    '0.0.0.0',
    '10.0.0.5',
    '192.168.1.2',
    '::',
    '::2',
    'nats',
    'polytune-nats.default.svc',
    '128.0.0.1',
    'localhost.example.com',
  ])('%s is not', (h) => {
    expect(isLoopbackHost(h)).toBe(false);
  });
});

describe('checkNatsExposure', () => {
  it('accepts an unauthenticated NATS on loopback (the local cluster, a laptop)', () => {
    expect(checkNatsExposure({ natsUrl: 'nats://127.0.0.1:4222' })).toBe(NatsExposure.Loopback);
    expect(checkNatsExposure({ natsUrl: 'nats://localhost:4222,nats://[::1]:4223' })).toBe(NatsExposure.Loopback);
    expect(checkNatsExposure({ natsUrl: '127.0.0.1:4222' })).toBe(NatsExposure.Loopback);
  });

  it('refuses an unauthenticated NATS off loopback, naming the hosts and the way out', () => {
    const f = (): unknown => checkNatsExposure({ natsUrl: 'nats://10.0.0.5:4222,nats://127.0.0.1:4222' });
    expect(f).toThrow(InsecureNatsError);
    expect(f).toThrow(UserError);
    expect(f).toThrow(/10\.0\.0\.5 is not loopback.*--nats-creds.*--insecure-nats/);
    expect(() => checkNatsExposure({ natsUrl: 'nats://polytune-nats.default.svc:4222' })).toThrow(
      /polytune-nats\.default\.svc/,
    );
    // TLS that only verifies the server does not authenticate the coordinator: still refused.
    expect(() => checkNatsExposure({ natsUrl: 'nats://nats:4222', connect: { tls: { ca: 'PEM' } } })).toThrow(
      InsecureNatsError,
    );
  });

  it('accepts it with --insecure-nats', () => {
    expect(checkNatsExposure({ natsUrl: 'nats://10.0.0.5:4222', insecureNats: true })).toBe(NatsExposure.Insecure);
  });

  it(
    'accepts any host when the coordinator authenticates: creds, ' +
      'token, user, a client certificate, or a user in the URL',
    () => {
      const url = 'nats://10.0.0.5:4222';
      const creds = '-----BEGIN NATS USER JWT-----\neyJ\n------END NATS USER JWT------\n';
      expect(
        checkNatsExposure({
          natsUrl: url,
          connect: { authenticator: credsAuthenticator(new TextEncoder().encode(creds)) },
        }),
      ).toBe(NatsExposure.Authenticated);
      expect(checkNatsExposure({ natsUrl: url, connect: { token: 't' } })).toBe(NatsExposure.Authenticated);
      expect(checkNatsExposure({ natsUrl: url, connect: { user: 'u', pass: 'p' } })).toBe(NatsExposure.Authenticated);
      expect(checkNatsExposure({ natsUrl: url, connect: { tls: { ca: 'PEM', cert: 'PEM', key: 'PEM' } } })).toBe(
        NatsExposure.Authenticated,
      );
      expect(checkNatsExposure({ natsUrl: 'nats://u:p@10.0.0.5:4222' })).toBe(NatsExposure.Authenticated);
      expect(() => checkNatsExposure({ natsUrl: 'nats://u:p@10.0.0.5:4222,nats://10.0.0.6:4222' })).toThrow(
        /10\.0\.0\.6/,
      );
    },
  );

  it('names a URL it cannot parse', () => {
    expect(natsServerAddresses('nats://a:1, b:2')).toEqual([
      { host: 'a', credentialsInUrl: false },
      { host: 'b', credentialsInUrl: false },
    ]);
    expect(() => checkNatsExposure({ natsUrl: 'nats://[bad' })).toThrow(/--nats: "nats:\/\/\[bad" is not a NATS URL/);
    expect(() => checkNatsExposure({ natsUrl: ' , ' })).toThrow(/no server URL/);
  });
});

describe('identity errors on the wire', () => {
  it('a worker id in use is ALREADY_EXISTS; a missing Hello is DEADLINE_EXCEEDED', () => {
    expect(toGrpcStatus(new WorkerIdInUseError('w', 10)).code).toBe(status.ALREADY_EXISTS);
    expect(toGrpcStatus(new JoinDeadlineError('no Hello')).code).toBe(status.DEADLINE_EXCEEDED);
  });
});
