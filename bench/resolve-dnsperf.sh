#!/usr/bin/env bash
# Throughput of `exfilguard resolve` (issue 5): dnsperf against PowerDNS Recursor alone, then
# against exfilguard resolve forwarding to the same recursor, in one run on one machine.
# Benign names (98 %) under an internal zone served by PowerDNS Authoritative (cached by the
# recursor after the first pass), plus 2 % tunnel-shaped names under a C2 zone (the
# first is judged by the model, the rest refused by the domain conviction).
# Needs pdns-server, pdns-backend-bind, pdns-recursor, dnsperf (Debian). No root.
# Usage: bench/resolve-dnsperf.sh [SECONDS] [CLIENTS]
set -euo pipefail
secs=${1:-20}; clients=${2:-20}
bin=${EXFILGUARD_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/exfilguard}
w=$(mktemp -d /tmp/eg-rbench.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.5; rm -rf $w' EXIT
cat > $w/corp.test.zone <<'EOZ'
$ORIGIN corp.test.
@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60
@ 3600 IN NS ns1
ns1 3600 IN A 127.0.0.1
* 3600 IN A 10.1.0.99
* 3600 IN TXT "ok"
EOZ
sed 's/corp.test/c2.test/' $w/corp.test.zone > $w/c2.test.zone
for z in corp.test c2.test; do echo "zone \"$z\" { type master; file \"$w/$z.zone\"; };"; done > $w/named.conf
pdns_server --no-config --daemon=no --guardian=no --disable-syslog --write-pid=no --security-poll-suffix= \
  --launch=bind --bind-config=$w/named.conf --socket-dir=$w --local-address=127.0.0.1 --local-port=5410 \
  --loglevel=3 >/dev/null 2>&1 &
printf 'addNTA("corp.test")\naddNTA("c2.test")\n' > $w/rec.lua; : > $w/recursor.conf
pdns_recursor --config-dir=$w --socket-dir=$w --daemon=no --disable-syslog --write-pid=no --security-poll-suffix= \
  --local-address=127.0.0.1 --local-port=5411 --forward-zones=corp.test=127.0.0.1:5410,c2.test=127.0.0.1:5410 --dont-query= \
  --lua-config-file=$w/rec.lua --threads=1 --loglevel=3 >/dev/null 2>&1 &
cat > $w/eg.toml <<EOC
[events.file]
path = "$w/events.jsonl"
[metrics]
listen = "127.0.0.1:9412"
[resolve]
listen = ["127.0.0.1:5412"]
upstreams = ["127.0.0.1:5411"]
EOC
"$bin" resolve --config $w/eg.toml 2> $w/eg.log &
sleep 2
python3 - "$w" <<'EOP'
import sys, random, base64
w = sys.argv[1]; r = random.Random(3)
words = "mail www api cdn static img login shop news docs app m blog portal video".split()
with open(f"{w}/q.txt", "w") as f:
    for i in range(20000):
        if i % 50 == 0:   # 2 % tunnel-shaped
            p = base64.b32encode(r.randbytes(30)).decode().rstrip("=").lower()
            f.write(f"{p}.t.c2.test TXT\n")
        else:
            f.write(f"{r.choice(words)}{i % 3000}.corp.test A\n")
EOP
run() { dnsperf -s 127.0.0.1 -p $1 -d $w/q.txt -l $secs -c $clients -q 500 -t 2 2>&1; }
run 5411 >/dev/null   # warm the recursor cache
echo "== PowerDNS Recursor alone =="; run 5411 | tee $w/alone.out | grep -E "Queries (sent|completed|lost)|Queries per second|Average Latency"
echo "== exfilguard resolve -> Recursor =="; run 5412 | tee $w/front.out | grep -E "Queries (sent|completed|lost)|Queries per second|Average Latency"
a=$(awk '/Queries per second/{print $4}' $w/alone.out); f=$(awk '/Queries per second/{print $4}' $w/front.out)
python3 -c "print(f'front/alone QPS: {float($f)/float($a)*100:.1f} %')"
curl -s 127.0.0.1:9412/metrics | grep -E '^exfilguard_resolve_queries_total|^exfilguard_decisions_total'
