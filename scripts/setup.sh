#!/usr/bin/env bash
# Set-up for a fresh clone (idempotent): npm dependencies, a real nats-server (>= 2.9), dist/.
# Run by `npm test` (pretest) and by the quickstart. CI runs it as root on Debian 12.
#
# The nats-server binary is found, in order, at $POLYTUNE_NATS_SERVER, .cache/bin/nats-server,
# or on PATH (the same order as common/nats-server-binary.ts `findNatsServer()`). When none is
# there and this is Debian/Ubuntu with root, it is built from Debian's
# golang-github-nats-io-nats-server-dev source package with Debian's Go (about 15 s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="$ROOT/.cache"
BIN_DIR="$CACHE/bin"
NATS_BIN="$BIN_DIR/nats-server"
MIN_NATS="2.9.0"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. npm dependencies
# ---------------------------------------------------------------------------------------------
npm_deps() {
  command -v npm >/dev/null 2>&1 || die "npm not found; install Node.js >= 20"
  local need=0
  if [ ! -d node_modules ]; then
    need=1
  elif [ -f package-lock.json ] && [ package-lock.json -nt node_modules ]; then
    need=1
  fi
  if [ "$need" = 0 ]; then
    say "npm dependencies up to date"
    return
  fi
  if [ -f package-lock.json ]; then
    say "npm ci"
    npm ci --no-audit --no-fund
  else
    say "npm install (no package-lock.json)"
    npm install --no-audit --no-fund
  fi
  # npm ci may leave node_modules' mtime older than the lockfile; mark it fresh.
  touch node_modules
}

# ---------------------------------------------------------------------------------------------
# 2. nats-server
# ---------------------------------------------------------------------------------------------
# prints the version (e.g. 2.9.10) of the binary $1, or nothing
nats_version() {
  "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1
}

# true when version $1 >= $2
version_ge() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

usable_nats() {
  local bin="$1" v
  [ -n "$bin" ] && [ -x "$bin" ] || return 1
  v="$(nats_version "$bin")"
  [ -n "$v" ] && version_ge "$v" "$MIN_NATS"
}

wait_for_apt() {
  # Another apt/dpkg may hold the lock (e.g. a provisioning job); wait up to 10 minutes.
  command -v fuser >/dev/null 2>&1 || return 0
  local i=0
  while fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock >/dev/null 2>&1; do
    [ "$i" = 0 ] && say "waiting for another apt/dpkg to finish"
    i=$((i + 1))
    [ "$i" -gt 600 ] && die "apt/dpkg lock still held after 10 minutes"
    sleep 1
  done
}

install_debian_packages() {
  local pkgs=() p
  for p in golang-go golang-github-nats-io-nats-server-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
  done
  if [ "${#pkgs[@]}" = 0 ]; then
    say "Debian packages golang-go and golang-github-nats-io-nats-server-dev already installed"
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  wait_for_apt
  # `apt-get update` only if the package lists do not know the packages yet.
  if ! apt-cache show golang-github-nats-io-nats-server-dev >/dev/null 2>&1 \
    || ! apt-cache show golang-go >/dev/null 2>&1; then
    say "apt-get update"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
  fi
  say "apt-get install ${pkgs[*]}"
  wait_for_apt
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

build_nats_from_debian_source() {
  local gopath=/usr/share/gocode go_bin
  go_bin="$(command -v go || true)"
  [ -n "$go_bin" ] || go_bin=/usr/lib/go/bin/go
  [ -x "$go_bin" ] || die "go not found after installing golang-go"
  [ -d "$gopath/src/github.com/nats-io/nats-server" ] \
    || die "$gopath/src/github.com/nats-io/nats-server missing after installing golang-github-nats-io-nats-server-dev"
  mkdir -p "$BIN_DIR" "$CACHE/go-build"
  say "building nats-server from $gopath with $("$go_bin" version | awk '{print $3}') (about 15 s)"
  GO111MODULE=off GOPATH="$gopath" GOCACHE="$CACHE/go-build" GOFLAGS= \
    "$go_bin" build -o "$NATS_BIN.tmp" github.com/nats-io/nats-server
  mv -f "$NATS_BIN.tmp" "$NATS_BIN"
}

explain_nats() {
  cat >&2 <<'EOF'
setup: error: no nats-server >= 2.9 found, and it cannot be built here automatically
  (that needs Debian/Ubuntu with apt-get, run as root).
  Get one of these ways, then re-run this script:
    - download a release: https://github.com/nats-io/nats-server/releases
      and put `nats-server` on PATH or at .cache/bin/nats-server
    - with Go installed:  go install github.com/nats-io/nats-server/v2@latest
      (puts it in $(go env GOPATH)/bin; add that to PATH)
    - or point POLYTUNE_NATS_SERVER at a nats-server binary
EOF
  exit 1
}

ensure_nats() {
  local found=""
  if [ -n "${POLYTUNE_NATS_SERVER:-}" ]; then
    usable_nats "$POLYTUNE_NATS_SERVER" \
      || die "POLYTUNE_NATS_SERVER=$POLYTUNE_NATS_SERVER is not an executable nats-server >= $MIN_NATS"
    found="$POLYTUNE_NATS_SERVER"
  elif usable_nats "$NATS_BIN"; then
    found="$NATS_BIN"
  elif usable_nats "$(command -v nats-server || true)"; then
    found="$(command -v nats-server)"
  fi
  if [ -n "$found" ]; then
    say "nats-server $(nats_version "$found") at $found"
    return
  fi
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    install_debian_packages
    build_nats_from_debian_source
    usable_nats "$NATS_BIN" || die "built $NATS_BIN but it does not report a version >= $MIN_NATS"
    say "nats-server $(nats_version "$NATS_BIN") at $NATS_BIN"
    return
  fi
  explain_nats
}

# ---------------------------------------------------------------------------------------------
# 2b. Deploy and monitoring tooling (issue 7), separate from the nats-server block above:
#     - Debian's `prometheus` package: `promtool` and a real Prometheus server for the metrics and
#       rules tests (test/integration/metrics-*.test.ts, test/deploy/);
#     - Debian's sprig and ghodss/yaml Go sources, and from them tools/helm-render, the test-only
#       stand-in for `helm template` (built into .cache/bin/helm-render).
#     Each is installed only when missing. Without apt-get/root this block only says so: the
#     suites that need these tools then skip with a message (on Debian and in CI they run).
#     Note: on a host running systemd, installing `prometheus` also enables its service (:9090).
# ---------------------------------------------------------------------------------------------
HELM_RENDER_BIN="$BIN_DIR/helm-render"
DEPLOY_GOPATH=/usr/share/gocode

deploy_tools() {
  local pkgs=()
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || pkgs+=(prometheus)
  [ -d "$DEPLOY_GOPATH/src/github.com/Masterminds/sprig" ] || pkgs+=(golang-github-masterminds-sprig-dev)
  [ -d "$DEPLOY_GOPATH/src/github.com/ghodss/yaml" ] || pkgs+=(golang-github-ghodss-yaml-dev)
  command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ] || pkgs+=(golang-go)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      export DEBIAN_FRONTEND=noninteractive
      wait_for_apt
      if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
        say "apt-get update"
        apt-get -o DPkg::Lock::Timeout=600 update -qq
      fi
      say "apt-get install ${pkgs[*]}"
      wait_for_apt
      apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    else
      say "warning: missing ${pkgs[*]} and no apt-get as root to install them; the deploy/metrics tests that need them will skip"
      return 0
    fi
  else
    say "prometheus (promtool $(promtool --version 2>/dev/null | awk 'NR==1{print $3}')), sprig and ghodss/yaml already installed"
  fi
  local go_bin
  go_bin="$(command -v go || echo /usr/lib/go/bin/go)"
  if [ ! -x "$HELM_RENDER_BIN" ] || [ -n "$(find tools/helm-render -name '*.go' -newer "$HELM_RENDER_BIN" 2>/dev/null)" ]; then
    say "building tools/helm-render (test-only stand-in for helm template)"
    mkdir -p "$BIN_DIR" "$CACHE/go-build"
    GO111MODULE=off GOPATH="$DEPLOY_GOPATH" GOCACHE="$CACHE/go-build" GOFLAGS= \
      "$go_bin" build -o "$HELM_RENDER_BIN.tmp" ./tools/helm-render
    mv -f "$HELM_RENDER_BIN.tmp" "$HELM_RENDER_BIN"
  fi
}

# ---------------------------------------------------------------------------------------------
# 2c. Native products (issue 18): Debian's OpenBLAS and a C compiler, then the Node-API addon
#     (scripts/build-native.sh -> .cache/native/polytune-blas.node). Never fails the set-up: without
#     the addon the workers run the XNNPACK kernels and say so.
# ---------------------------------------------------------------------------------------------
native_products() {
  local pkgs=() p
  for p in libopenblas-dev gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
  done
  if [ "${#pkgs[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    wait_for_apt
    if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
      apt-get -o DPkg::Lock::Timeout=600 update -qq || true
    fi
    say "apt-get install ${pkgs[*]}"
    wait_for_apt
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
      || say "warning: apt-get install ${pkgs[*]} failed"
  fi
  if ! bash scripts/build-native.sh; then
    say "warning: native products addon not built (above); workers run the XNNPACK kernels"
  fi
  return 0
}

# ---------------------------------------------------------------------------------------------
# 3. build (dist/ for e2e tests)
# ---------------------------------------------------------------------------------------------
build() {
  say "npm run build"
  if ! npm run --silent build; then
    if [ "${POLYTUNE_SETUP_IGNORE_BUILD_ERRORS:-0}" = 1 ]; then
      say "warning: npm run build failed (see above); continuing (POLYTUNE_SETUP_IGNORE_BUILD_ERRORS=1)"
      return 0
    fi
    say "error: npm run build failed (see above); set POLYTUNE_SETUP_IGNORE_BUILD_ERRORS=1 to go on anyway"
    return 1
  fi
}

npm_deps
ensure_nats
deploy_tools
native_products
if build; then
  say "done"
else
  say "failed: the build did not pass"
  exit 1
fi
