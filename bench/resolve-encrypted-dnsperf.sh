#!/usr/bin/env bash
# Throughput of `exfilguard resolve` over DoT and DoH against UDP and TCP (issue 24): one front
# with a self-signed certificate in front of PowerDNS Recursor (+ Authoritative), dnsperf in
# each mode against the same front and upstream in one run on one machine. Same query mix as
# bench/resolve-dnsperf.sh (98 % benign names of an internal zone, 2 % tunnel-shaped names).
# dnsperf keeps its TCP/DoT/DoH connections open (pipelined queries; DoH: HTTP/2 streams).
# Needs pdns-server, pdns-backend-bind, pdns-recursor, dnsperf >= 2.10 (Debian 12). No root.
# Usage: bench/resolve-encrypted-dnsperf.sh [SECONDS] [CLIENTS]
set -euo pipefail
secs=${1:-10}; clients=${2:-20}
bin=${EXFILGUARD_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/exfilguard}
w=$(mktemp -d /tmp/eg-ebench.XXXX)
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
  --launch=bind --bind-config=$w/named.conf --socket-dir=$w --local-address=127.0.0.1 --local-port=5420 \
  --loglevel=3 >/dev/null 2>&1 &
printf 'addNTA("corp.test")\naddNTA("c2.test")\n' > $w/rec.lua; : > $w/recursor.conf
pdns_recursor --config-dir=$w --socket-dir=$w --daemon=no --disable-syslog --write-pid=no --security-poll-suffix= \
  --local-address=127.0.0.1 --local-port=5421 --forward-zones=corp.test=127.0.0.1:5420,c2.test=127.0.0.1:5420 --dont-query= \
  --lua-config-file=$w/rec.lua --threads=1 --max-tcp-clients=1024 --loglevel=3 >/dev/null 2>&1 &
cat > $w/eg.toml <<EOC
[events.file]
path = "$w/events.jsonl"
[metrics]
listen = "127.0.0.1:9422"
[resolve]
listen = ["127.0.0.1:5422"]
upstreams = ["127.0.0.1:5421"]
listen_tls = ["127.0.0.1:5423"]
listen_https = ["127.0.0.1:5424"]
tls_self_signed = true
tls_cert = "$w/cert.pem"
tls_key = "$w/key.pem"
# one load generator on loopback: above its connection count, and no behaviour alarm for
# one client sending ~100 k names a second into one zone (which would refuse the benign mix)
tcp_max_per_client = 64
[behaviour]
enabled = false
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
run() { dnsperf -s 127.0.0.1 -d $w/q.txt -l $secs -c $clients -q 500 -t 2 "$@" 2>&1; }
run -p 5421 >/dev/null   # warm the recursor cache
for mode in udp:5422 tcp:5422 dot:5423 doh:5424; do
  m=${mode%:*}; p=${mode#*:}
  extra=(); [ "$m" = doh ] && extra=(-O doh-uri=https://127.0.0.1:$p/dns-query -O doh-method=POST)
  echo "== exfilguard resolve over $m -> Recursor =="
  run -m $m -p $p "${extra[@]}" | tee $w/$m.out | grep -E "Queries (sent|completed|lost)|Queries per second|Average Latency"
done
# dnsperf 2.10's DoH client stalls with several queries in flight (DNS-OARC/dnsperf #240,
# #272): DoH is measured again with curl, HTTP/2 GET requests multiplexed over one connection
python3 - "$w" <<'EOP'
import sys, struct, base64
w = sys.argv[1]
with open(f"{w}/q.txt") as f, open(f"{w}/urls.cfg", "w") as out:
    for i, line in enumerate(f):
        if i == 20000:
            break
        name, qtype = line.split()
        q = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
        q += struct.pack(">HH", 16 if qtype == "TXT" else 1, 1)
        d = base64.urlsafe_b64encode(q).decode().rstrip("=")
        out.write(f'url = "https://127.0.0.1:5424/dns-query?dns={d}"\noutput = "/dev/null"\n')
EOP
t0=$(date +%s.%N)
curl -sS --http2 --parallel --parallel-max 100 --cacert $w/cert.pem -K $w/urls.cfg -w '%{http_code}\n' > $w/curl.codes
t1=$(date +%s.%N)
ok=$(grep -c '^200$' $w/curl.codes || true)
echo "== exfilguard resolve over doh (curl --http2 --parallel, 100 streams, one connection) =="
python3 -c "print(f'  Requests: 20000, 200 OK: $ok, Queries per second: {$ok/($t1-$t0):.0f}')" | tee $w/doh-curl.out
u=$(awk '/Queries per second/{print $4}' $w/udp.out)
python3 -c "print(f'doh(curl)/udp QPS: {$ok/($t1-$t0)/float(\"$u\")*100:.1f} %')"
for m in tcp dot doh; do
  q=$(awk '/Queries per second/{print $4}' $w/$m.out)
  python3 -c "print(f'$m/udp QPS: {float(\"$q\")/float(\"$u\")*100:.1f} %')"
done
curl -s 127.0.0.1:9422/metrics | grep -E '^exfilguard_resolve_queries_total|^exfilguard_resolve_tls_handshakes_total|^exfilguard_resolve_doh_responses_total'
