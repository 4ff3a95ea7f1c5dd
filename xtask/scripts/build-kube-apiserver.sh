#!/usr/bin/env bash
# Build Kubernetes v1.20.2 components from Debian bookworm's `kubernetes`
# source package with Debian's Go 1.19, and unpack Debian's etcd 3.4 next to
# them. No registry ships these binaries; this is the one offline route
# (docs/architecture.md, "Tests against a real API server" and "A real node").
#
# Usage: build-kube-apiserver.sh CACHE_DIR [COMPONENT...]
#   COMPONENT: kube-apiserver (the default), kubelet, kube-controller-manager,
#   kube-scheduler, kube-proxy, kubectl, pause (the pod sandbox, from
#   build/pause/linux/pause.c of the same tree).
# Idempotent: every step leaves a marker and is skipped when its output
# exists; the binaries end up in $CACHE_DIR/bin/ (plus etcd, etcdctl).
# Nothing outside CACHE_DIR is written (apt runs with its own state dir).
# Concurrent runs on one CACHE_DIR wait for each other (flock).
set -euo pipefail

CACHE=${1:?usage: build-kube-apiserver.sh CACHE_DIR}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
BIN=$CACHE/bin
SRC_VERSION=1.20.5+really1.20.2
TREE=$CACHE/kubernetes-1.20.2
mkdir -p "$BIN" "$CACHE/debs"
shift
WANT=("$@")
[[ ${#WANT[@]} -gt 0 ]] || WANT=(kube-apiserver)

log() { echo "kube build: $*" >&2; }

missing=()
for c in "${WANT[@]}"; do
  case $c in
    kube-apiserver|kubelet|kube-controller-manager|kube-scheduler|kube-proxy|kubectl|pause) ;;
    *) log "unknown component $c"; exit 2 ;;
  esac
  [[ -x $BIN/$c ]] || missing+=("$c")
done
if [[ ${#missing[@]} -eq 0 && -x $BIN/etcd && -x $BIN/etcdctl ]]; then
  log "already built in $BIN: ${WANT[*]}"
  exit 0
fi

# One build at a time per cache (two engineers, or a test run and
# `cargo xtask node`, may ask at once); the second one then finds the
# binaries and only re-checks.
exec 9>"$CACHE/.build.lock"
flock 9

# Binary package lists: a fresh machine may have none yet.
if ! apt-cache show golang-1.19-go >/dev/null 2>&1; then
  log "apt-get update (binary package lists missing)"
  apt-get update -qq
fi

# 1. Source package, through apt with a private deb-src list and state dir.
if [[ ! -d $TREE ]]; then
  mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/parts"
  # deb-src entries derived from this machine's own Debian sources, so the
  # source package comes from the same archive apt already uses here.
  : > "$CACHE/apt/src.list"
  rm -f "$CACHE/apt/parts/"*.sources
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && grep -q 'debian-archive-keyring' "$f" || continue
    sed -e 's/^Types:.*/Types: deb-src/' "$f" > "$CACHE/apt/parts/$(basename "$f")"
  done
  if [[ -f /etc/apt/sources.list ]]; then
    sed -n -e 's/^deb \(.*debian.*\)$/deb-src \1/p' /etc/apt/sources.list >> "$CACHE/apt/src.list"
  fi
  if [[ ! -s $CACHE/apt/src.list ]] && ! ls "$CACHE/apt/parts/"*.sources >/dev/null 2>&1; then
    log "no Debian apt source found in /etc/apt to derive a deb-src entry from"
    exit 1
  fi
  # Sandbox off: the _apt user cannot write into root's cache directory.
  A=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$CACHE/apt/src.list" -o "Dir::Etc::SourceParts=$CACHE/apt/parts"
     -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache")
  orig=kubernetes_${SRC_VERSION}.orig.tar.gz
  if [[ ! -f $CACHE/debs/$orig ]]; then
    log "downloading the kubernetes source package"
    apt-get "${A[@]}" -qq update
    (cd "$CACHE/debs" && apt-get "${A[@]}" source --download-only "kubernetes=${SRC_VERSION}-1.1+deb12u1" \
      || apt-get "${A[@]}" source --download-only kubernetes)
  fi
  log "unpacking $orig"
  rm -rf "$TREE.partial" && mkdir -p "$TREE.partial"
  tar xzf "$CACHE/debs/$orig" -C "$TREE.partial" --strip-components=1
  mv "$TREE.partial" "$TREE"
fi

# 2. Debian's Go 1.19 and the fixed reflect2, unpacked (not installed).
fetch_unpack() { # package dest
  local pkg=$1 dest=$2
  [[ -d $dest ]] && return 0
  (cd "$CACHE/debs" && ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get -o APT::Sandbox::User=root download -qq "$pkg")
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  for f in "$CACHE/debs/${pkg}"_*.deb; do dpkg -x "$f" "$dest.partial"; done
  mv "$dest.partial" "$dest"
}
fetch_unpack golang-1.19-go "$CACHE/go-bin"
fetch_unpack golang-1.19-src "$CACHE/go-src"
fetch_unpack golang-github-modern-go-reflect2-dev "$CACHE/reflect2"
fetch_unpack etcd-server "$CACHE/etcd-server"
fetch_unpack etcd-client "$CACHE/etcd-client"
# golang-1.19-go and -src install into one GOROOT; merge them once.
GOROOT=$CACHE/goroot/usr/lib/go-1.19
if [[ ! -x $GOROOT/bin/go ]]; then
  rm -rf "$CACHE/goroot" && mkdir -p "$CACHE/goroot"
  cp -a "$CACHE/go-bin/." "$CACHE/goroot/"
  cp -a "$CACHE/go-src/." "$CACHE/goroot/"
fi
export GOROOT PATH=$GOROOT/bin:$PATH

# 3. GOPATH mode, exactly as hack/lib/init.sh builds 1.20 (module mode fails
#    with "updates to go.mod needed, disabled by -mod=vendor").
export GOPATH=$CACHE/gopath GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
export GOCACHE=$CACHE/gocache
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$TREE" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# Fix 2: vendored reflect2 1.0.1 crashes under Go >= 1.18 (runtime.mapiternext
# fault seconds after start); Debian ships the fixed 1.0.2.
R2=vendor/github.com/modern-go/reflect2
if [[ ! -f $R2/.jwtgate-1.0.2 ]]; then
  log "swapping in reflect2 1.0.2"
  rm -rf "$R2" && mkdir -p "$R2"
  cp "$CACHE"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$R2/"
  cp "$CACHE"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$R2/" 2>/dev/null || true
  rm -f "$R2"/*_test.go
  touch "$R2/.jwtgate-1.0.2"
fi

# Fix 1: the OpenAPI definitions are generated by `make`, not shipped.
OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [[ ! -f $OPENAPI ]]; then
  log "generating $OPENAPI"
  go build -o "$BIN/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  # Inputs as build/root/Makefile.generated_files computes them: every Go
  # package with a +k8s:openapi-gen= tag (staging seen through vendor/),
  # minus code-generator and sample-apiserver.
  INPUTS=$(grep -rl --include='*.go' -e '+k8s:openapi-gen=' cmd pkg plugin staging/src test third_party 2>/dev/null \
    | xargs -n1 dirname | LC_ALL=C sort -u \
    | sed 's|^staging/src/|vendor/|' \
    | grep -v -e '^vendor/k8s.io/code-generator' -e '^vendor/k8s.io/sample-apiserver' \
    | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  log "openapi-gen over $(tr ',' '\n' <<<"$INPUTS" | wc -l) packages"
  mkdir -p "$CACHE/openapi-report"
  "$BIN/openapi-gen" --logtostderr -i "$INPUTS" -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$CACHE/openapi-report/violations.list" --output-base "$GOPATH/src"
fi

ln -sfn "$CACHE/etcd-server/usr/bin/etcd" "$BIN/etcd"
ln -sfn "$CACHE/etcd-client/usr/bin/etcdctl" "$BIN/etcdctl"

# Go builds are heavy and the machines are shared: lower priority.
NICE=(nice -n 10)

if [[ " ${WANT[*]} " == *" kube-apiserver "* && ! -x $BIN/kube-apiserver ]]; then
  log "go build ./cmd/kube-apiserver (cold: ~5 min on 2 cores)"
  "${NICE[@]}" go build -p "$(nproc)" -ldflags "-s -w" -o "$BIN/kube-apiserver.partial" ./cmd/kube-apiserver
  mv "$BIN/kube-apiserver.partial" "$BIN/kube-apiserver"
  log "done: $BIN/kube-apiserver"
fi

# The node components, in one `go build` so the packages they share are
# compiled once. `providerless` leaves out the in-tree cloud providers (AWS,
# Azure, GCE, OpenStack, vSphere SDKs: most of the compile time, and nothing
# a one-node test cluster uses). The version is stamped on the vendor path,
# as hack/lib/version.sh does, so the node reports v1.20.2 rather than v0.0.0.
GO_NODE=()
for c in kubelet kube-controller-manager kube-scheduler kube-proxy kubectl; do
  if [[ " ${WANT[*]} " == *" $c "* && ! -x $BIN/$c ]]; then GO_NODE+=("./cmd/$c"); fi
done
if [[ ${#GO_NODE[@]} -gt 0 ]]; then
  V=k8s.io/kubernetes/vendor/k8s.io
  LDFLAGS="-s -w"
  for pkg in component-base/version client-go/pkg/version; do
    LDFLAGS+=" -X $V/$pkg.gitVersion=v1.20.2 -X $V/$pkg.gitMajor=1 -X $V/$pkg.gitMinor=20"
    LDFLAGS+=" -X $V/$pkg.gitTreeState=clean -X $V/$pkg.buildDate=2021-01-13T13:20:00Z"
  done
  log "go build ${GO_NODE[*]} (cold: ~10 min on 2 cores)"
  rm -rf "$BIN/.partial" && mkdir -p "$BIN/.partial"
  "${NICE[@]}" go build -p "$(nproc)" -tags providerless -ldflags "$LDFLAGS" -o "$BIN/.partial/" "${GO_NODE[@]}"
  for p in "${GO_NODE[@]}"; do mv "$BIN/.partial/${p#./cmd/}" "$BIN/"; done
  rmdir "$BIN/.partial"
  log "done: ${GO_NODE[*]#./cmd/}"
fi

# The pod sandbox ("pause") of the same release: a static C program.
if [[ " ${WANT[*]} " == *" pause "* && ! -x $BIN/pause ]]; then
  gcc -Os -Wall -Werror -static -DVERSION=v3.4-jwtgate -o "$BIN/pause.partial" build/pause/linux/pause.c
  mv "$BIN/pause.partial" "$BIN/pause"
  log "done: $BIN/pause"
fi
