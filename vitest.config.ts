import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Each worker process runs TensorFlow.js on one core; two forks match a 2-core machine.
    pool: 'forks',
    maxWorkers: 2,
  },
});
