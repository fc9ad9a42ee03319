#!/usr/bin/env bash
# Cost of forwarding over DoT (resolve.upstream_tls, issue 24): two fronts in front of one
# Unbound, one forwarding over plain UDP/TCP, one over DNS over TLS, dnsperf (UDP, 20 clients)
# against each in one run on one machine; Unbound answers every name of ok.example from a local
# redirect zone (no recursion), so the upstream's own cost is the same in both modes. Needs
# unbound, dnsperf and openssl (Debian 12). No root.
# Usage: bench/resolve-dot-upstream-dnsperf.sh [SECONDS] [CLIENTS]
set -euo pipefail
secs=${1:-10}; clients=${2:-20}
bin=${EXFILGUARD_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/exfilguard}
w=$(mktemp -d /tmp/eg-dotbench.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.5; rm -rf $w' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=dot.test \
  -addext subjectAltName=DNS:dot.test -addext basicConstraints=critical,CA:FALSE -days 2 \
  -keyout $w/key.pem -out $w/cert.pem 2>/dev/null
cat > $w/unbound.conf <<EOC
server:
  interface: 127.0.0.1@5430
  interface: 127.0.0.1@5431
  tls-port: 5431
  tls-service-key: "$w/key.pem"
  tls-service-pem: "$w/cert.pem"
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  directory: "$w"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  incoming-num-tcp: 1000
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  local-zone: "ok.example." redirect
  local-data: "ok.example. 60 A 10.9.9.9"
EOC
unbound -d -c $w/unbound.conf 2> $w/unbound.log &
for mode in plain dot; do
  port=$([ $mode = plain ] && echo 5432 || echo 5433)
  {
    printf '[metrics]\nlisten = "127.0.0.1:%s"\n[resolve]\nlisten = ["127.0.0.1:%s"]\n' $((port + 4000)) $port
    if [ $mode = plain ]; then
      printf 'upstreams = ["127.0.0.1:5430"]\n'
    else
      printf 'upstreams = ["127.0.0.1:5431"]\nupstream_tls = true\nupstream_tls_name = "dot.test"\nupstream_tls_ca = "%s"\n' "$w/cert.pem"
    fi
    printf '[behaviour]\nenabled = false\n'
  } > $w/$mode.toml
  "$bin" resolve --config $w/$mode.toml 2> $w/$mode.log &
done
sleep 2
python3 -c "
import random
r = random.Random(3)
words = 'mail www api cdn static img login shop news docs app m blog portal video'.split()
with open('$w/q.txt', 'w') as f:
    for i in range(20000):
        f.write(f'{r.choice(words)}{r.randrange(100)}.ok.example A\n')
"
declare -A qps
for mode in plain dot; do
  port=$([ $mode = plain ] && echo 5432 || echo 5433)
  dnsperf -s 127.0.0.1 -p $port -d $w/q.txt -l "$secs" -c "$clients" -q 200 > $w/$mode.out 2>&1 || true
  qps[$mode]=$(awk '/Queries per second/ {print $4}' $w/$mode.out)
  lost=$(awk '/Queries lost/ {print $3}' $w/$mode.out)
  echo "$mode upstream: ${qps[$mode]} q/s (lost $lost)"
done
python3 -c "print(f'DoT upstream / plain upstream: {float(\"${qps[dot]}\") / float(\"${qps[plain]}\"):.2f}')"
