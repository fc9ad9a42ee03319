#!/usr/bin/env bash
# Load benchmark of the agent (issue 4): 20 k q/s of mixed benign + tunnel-shaped DNS for 60 s
# through `exfilguard run` in a network namespace; reports the benign queries' loss and latency
# (dnsperf), how the tunnel queries were handled, the agent's peak RSS and its queue depths.
# Root; needs dnsperf and dnsmasq-base (Debian); a tansu broker on PATH is used when present.
# Usage: bench/agent-load.sh [SECONDS] [TOTAL_QPS]
# EDNS_COOKIE=1: the benign client sends an OPT with one client cookie it keeps (as named does
# per server): the carrier pin (kernel.pin_carriers) holds it once, then passes it.
set -euo pipefail
secs=${1:-60}; qps=${2:-20000}
bin=${EXFILGUARD_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/exfilguard}
id=$$; c=eglc$id; s=egls$id; w=$(mktemp -d /tmp/eg-load.XXXX)
cleanup() { set +e; kill $(jobs -p) 2>/dev/null; sleep 1; ip netns del $c; ip netns del $s; rm -rf /sys/fs/bpf/eg-load-$id; }
trap cleanup EXIT
ip netns add $c; ip netns add $s
ip link add vl$id type veth peer name vr$id
ip link set vl$id netns $c; ip link set vr$id netns $s
ip -n $c addr add 10.66.0.1/24 dev vl$id; ip -n $c link set vl$id up; ip -n $c link set lo up
ip -n $s addr add 10.66.0.2/24 dev vr$id; ip -n $s link set vr$id up; ip -n $s link set lo up
ns() { local n=$1; shift; nsenter --net=/var/run/netns/$n "$@"; }
ns $s dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=10.66.0.2 \
  --address=/#/10.66.0.99 --cache-size=10000 --dns-forward-max=10000 --pid-file= --user=root 2>/dev/null &
kafka=""
if command -v tansu >/dev/null; then
  ns $s tansu broker --listener-url tcp://0.0.0.0:9092 --advertised-listener-url tcp://10.66.0.2:9092 >/dev/null 2>&1 &
  kafka="brokers = \"10.66.0.2:9092\""
fi
cat > $w/agent.toml <<EOC
[dataplane]
interfaces = ["vl$id"]
pin_dir = "/sys/fs/bpf/eg-load-$id"
[events.file]
path = "$w/events.jsonl"
[kafka]
$kafka
spool_dir = "$w/spool"
partitions = 1
replication = 1
[metrics]
listen = "127.0.0.1:9353"
EOC
# benign: 5 000 distinct ordinary names; tunnel: base32 payloads under 4 000 registered domains
python3 - "$w" <<'EOP'
import sys, random, base64
w = sys.argv[1]; r = random.Random(7)
words = "mail www api cdn static img login shop news docs app m blog portal video".split()
with open(f"{w}/benign.txt", "w") as f:
    for i in range(5000):
        f.write(f"{r.choice(words)}.site{i}.example A\n")
with open(f"{w}/tunnel.txt", "w") as f:
    for i in range(20000):
        p = base64.b32encode(r.randbytes(30)).decode().rstrip("=").lower()
        f.write(f"{p}.t.c2x{i % 4000}.example TXT\n")
EOP
ns $c "$bin" run --config $w/agent.toml 2> $w/agent.log &
for _ in $(seq 100); do grep -q protecting $w/agent.log && break; sleep 0.2; done
pid=$(pgrep -f "run --config $w/agent.toml" | head -1)
benign_qps=$((qps * 8 / 10)); tunnel_qps=$((qps - benign_qps))
( while kill -0 $pid 2>/dev/null; do awk '/VmRSS/{print $2}' /proc/$pid/status; sleep 1; done ) > $w/rss.txt &
edns=""; [ "${EDNS_COOKIE:-0}" = 1 ] && edns="-e -E 10:0123456789abcdef"
ns $c dnsperf -s 10.66.0.2 -d $w/benign.txt -l $secs -Q $benign_qps -c 20 -q 2000 -t 2 $edns > $w/benign.out 2>&1 & bp=$!
ns $c dnsperf -s 10.66.0.2 -d $w/tunnel.txt -l $secs -Q $tunnel_qps -c 20 -q 2000 -t 1 > $w/tunnel.out 2>&1 & tp=$!
wait $bp $tp 2>/dev/null || true
sleep 2
metrics=$(ns $c python3 -c 'import urllib.request;print(urllib.request.urlopen("http://127.0.0.1:9353/metrics").read().decode())')
kill -TERM $pid; sleep 3
echo "== benign (${benign_qps} q/s offered) =="; grep -E "Queries (sent|completed|lost)|Average Latency|Latency StdDev|Queries per second" $w/benign.out
echo "== tunnel-shaped (${tunnel_qps} q/s offered) =="; grep -E "Queries (sent|completed|lost)|Queries per second" $w/tunnel.out
echo "== agent =="
echo "peak RSS: $(sort -n $w/rss.txt | tail -1) KiB; median RSS: $(sort -n $w/rss.txt | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}') KiB"
echo "$metrics" | grep -E '^exfilguard_(kernel_events_total\{hook="egress",event="(dns_queries|pass_plain|hold|block|released|fail_closed|ringbuf_full|new_carrier)"|decisions_total|events_dropped_total|sink_queue_depth|spool_pending_bytes|kafka_delivered_total|map_entries\{map="blocklist")'
echo "$metrics" | grep -E '^exfilguard_hold_release_seconds_(sum|count)'
echo "events written: $(cat $w/events.jsonl* | wc -l) (file, with rotations)"
