#!/usr/bin/env bash
# Builds the native products addon (worker/native/polytune-blas.c, issue 18) into
# .cache/native/polytune-blas.node: one `gcc -shared`, no node-gyp (which would need the registry
# or Node's headers download at build time). Node-API is ABI-stable, so the build does not depend
# on the Node version beyond the headers' Node-API level (8, Node >= 12.22).
#
# Node-API headers, the first found: $POLYTUNE_NODE_API_HEADERS, node_modules/node-api-headers/include
# (the npm package), <node prefix>/include/node (Node's own: nodesource and official tarballs ship
# them), /usr/include/node, ~/.cache/node-gyp/<version>/include/node.
# OpenBLAS: Debian's libopenblas-dev (cblas.h, libopenblas.so), installed by scripts/setup.sh.
#
# Exit status 0 when built (or already up to date), 1 with one line on stderr otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/worker/native/polytune-blas.c"
OUT_DIR="$ROOT/.cache/native"
OUT="$OUT_DIR/polytune-blas.node"

fail() { printf 'build-native: %s\n' "$*" >&2; exit 1; }

[ -f "$SRC" ] || fail "$SRC missing"
if [ -f "$OUT" ] && [ "$OUT" -nt "$SRC" ] && [ "$OUT" -nt "${BASH_SOURCE[0]}" ]; then
  printf 'build-native: %s up to date\n' "${OUT#"$ROOT"/}"
  exit 0
fi

CC="${CC:-$(command -v gcc || command -v cc || true)}"
[ -n "$CC" ] || fail "no C compiler (gcc or cc) on PATH"

headers=""
node_prefix="$(node -p 'process.config.variables.node_prefix' 2>/dev/null || true)"
node_version="$(node -p 'process.versions.node' 2>/dev/null || true)"
for d in "${POLYTUNE_NODE_API_HEADERS:-}" "$ROOT/node_modules/node-api-headers/include" \
  "$(dirname "$(dirname "$(command -v node 2>/dev/null || echo /nonexistent/bin/node)")")/include/node" \
  "${node_prefix:-/nonexistent}/include/node" /usr/include/node "$HOME/.cache/node-gyp/$node_version/include/node"; do
  if [ -n "$d" ] && [ -f "$d/node_api.h" ]; then
    headers="$d"
    break
  fi
done
[ -n "$headers" ] || fail "no Node-API headers (node_api.h): install Node's headers or the node-api-headers npm package"

blas_cflags=""
for d in /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/include/openblas /usr/include; do
  if [ -f "$d/cblas.h" ]; then
    blas_cflags="-I$d"
    break
  fi
done
[ -n "$blas_cflags" ] || fail "no cblas.h: install Debian's libopenblas-dev"

mkdir -p "$OUT_DIR"
tmp="$OUT.tmp.$$"
if ! "$CC" -O3 -fno-math-errno -fopenmp-simd -fPIC -shared -std=c11 -Wall -Wextra -DNAPI_VERSION=8 -DNODE_GYP_MODULE_NAME=polytune_blas \
  -I"$headers" $blas_cflags -o "$tmp" "$SRC" -lopenblas -lm 2>"$OUT_DIR/build.log"; then
  rm -f "$tmp"
  fail "compiling $SRC failed (see .cache/native/build.log)"
fi
mv -f "$tmp" "$OUT"
printf 'build-native: built %s (headers %s)\n' "${OUT#"$ROOT"/}" "$headers"
