#!/usr/bin/env bash
# Tunnel flood (issue 7): 100 k q/s of tunnel-shaped queries for 60 s from the protected host
# (bench/udp-flood.py, 40 sockets of one process),
# with an ordinary benign stream beside it. Reports the benign queries' loss and latency
# (a dnsperf of their own), what the kernel did with the flood, the agent's RSS over time, and
# whether the local event file accounts for every dropped query (sum of OCSF `count` against
# the kernel's counters) with no record lost on the way.
# Root; needs dnsperf and dnsmasq-base (Debian).
# Usage: bench/flood.sh [SECONDS] [FLOOD_QPS] [BENIGN_QPS] [TUNNEL_DOMAINS]
set -euo pipefail
secs=${1:-60}; flood=${2:-100000}; benign=${3:-2000}; zones=${4:-200}
bin=${EXFILGUARD_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/exfilguard}
id=$$; c=egfc$id; s=egfs$id; w=$(mktemp -d /tmp/eg-flood.XXXX)
cleanup() { set +e; kill $(jobs -p) 2>/dev/null; sleep 1; ip netns del $c; ip netns del $s; rm -rf /sys/fs/bpf/eg-flood-$id; }
trap cleanup EXIT
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
ip netns add $c; ip netns add $s
ip link add vf$id type veth peer name vg$id
ip link set vf$id netns $c; ip link set vg$id netns $s
ip -n $c addr add 10.67.0.1/24 dev vf$id; ip -n $c link set vf$id up; ip -n $c link set lo up
ip -n $s addr add 10.67.0.2/24 dev vg$id; ip -n $s link set vg$id up; ip -n $s link set lo up
ns() { local n=$1; shift; nsenter --net=/var/run/netns/$n "$@"; }
ns $s dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=10.67.0.2 \
  --address=/#/10.67.0.99 --cache-size=10000 --dns-forward-max=10000 --pid-file= --user=root 2>/dev/null &
cat > $w/agent.toml <<EOC
[dataplane]
interfaces = ["vf$id"]
pin_dir = "/sys/fs/bpf/eg-flood-$id"
[events.file]
path = "$w/events.jsonl"
max_bytes = 1073741824
[kafka]
brokers = ""
[metrics]
listen = "127.0.0.1:9354"
EOC
python3 - "$w" "$zones" <<'EOP'
import sys, random, base64
w, zones = sys.argv[1], int(sys.argv[2]); r = random.Random(11)
words = "mail www api cdn static img login shop news docs app m blog portal video".split()
with open(f"{w}/benign.txt", "w") as f:
    for i in range(5000):
        f.write(f"{r.choice(words)}.site{i}.example A\n")
with open(f"{w}/flood.txt", "w") as f:
    for i in range(200000):
        p = base64.b32encode(r.randbytes(35)).decode().rstrip("=").lower()
        f.write(f"{p[:40]}.{p[40:]}.x.c2z{i % zones}.example TXT\n")
EOP
ns $c "$bin" run --config $w/agent.toml 2> $w/agent.log &
for _ in $(seq 150); do grep -q protecting $w/agent.log && break; sleep 0.2; done
pid=$(pgrep -f "run --config $w/agent.toml" | head -1)
( while kill -0 $pid 2>/dev/null; do echo "$(date +%s) $(awk '/VmRSS/{print $2}' /proc/$pid/status)"; sleep 1; done ) > $w/rss.txt &
scrape() { ns $c python3 -c 'import urllib.request;print(urllib.request.urlopen("http://127.0.0.1:9354/metrics").read().decode())'; }
idle_rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
ns $c dnsperf -s 10.67.0.2 -d $w/benign.txt -l $secs -Q $benign -c 4 -q 500 -t 2 > $w/benign.out 2>&1 & bp=$!
ns $c python3 "$(dirname "$0")/udp-flood.py" 10.67.0.2 $flood $secs $w/flood.txt 40 > $w/flood.out 2>&1 & fp=$!
wait $bp $fp 2>/dev/null || true
sleep 4   # the agent's sweep reports each key's last drops within a second or two
m=$(scrape)
kill -TERM $pid; for _ in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.2; done
kstat() { echo "$m" | awk -v e="$1" '$0 ~ "^exfilguard_kernel_events_total\\{hook=\"egress\",event=\""e"\"\\}" {print $2}'; }
metric() { echo "$m" | awk -v n="$1" '$1==n {print $2}'; }
echo "== benign stream (${benign} q/s offered) =="
grep -E "Queries (sent|completed|lost)|Average Latency|Latency StdDev|Queries per second" $w/benign.out
echo "== flood (${flood} q/s offered, ${zones} tunnel domains) =="
cat $w/flood.out
echo "== kernel (egress) =="
for e in dns_queries pass_plain hold block block_quiet released fail_closed ringbuf_full agent_down; do
  printf '%-13s %s\n' $e "$(kstat $e)"; done
echo "== agent =="
echo "RSS idle ${idle_rss} KiB; peak $(awk '{print $2}' $w/rss.txt | sort -n | tail -1) KiB; per 10 s:"
awk 'NR%10==1{printf "  t=%ds %s KiB\n", NR-1, $2}' $w/rss.txt
echo "events dropped (sink queue full): $(metric exfilguard_events_dropped_total)"
echo "events written to the file: $(metric 'exfilguard_events_written_total{sink="file"}')"
echo "$m" | grep -E '^exfilguard_hold_release_seconds_(sum|count)'
python3 - "$w" "$(kstat block)" "$(kstat hold)" "$(kstat released)" <<'EOP'
import sys, json, glob, collections
w, block, hold, released = sys.argv[1], int(float(sys.argv[2])), int(float(sys.argv[3])), int(float(sys.argv[4] or 0))
lines = 0; by = collections.Counter(); counted = collections.Counter(); bad = 0; alarms = 0
for p in sorted(glob.glob(f"{w}/events.jsonl*")):
    for l in open(p):
        lines += 1
        try: e = json.loads(l)
        except Exception: bad += 1; continue
        x = e["unmapped"]["exfilguard"]
        if (x.get("verdict") or {}).get("source") == "behaviour":
            alarms += 1   # an alarm about the flood's domain, not a drop
            continue
        by[(x["decision"], x["kernel_action"])] += 1
        counted[(x["decision"], x["kernel_action"])] += e.get("count", 1)
print(f"file: {lines} lines, {bad} unparsable, {alarms} behaviour alarms")
for k in sorted(by): print(f"  {k[0]:>9} / kernel {k[1]:<10} records {by[k]:>8}  drops counted {counted[k]:>10}")
blocked = counted[("blocked", "block")]
print(f"kernel blocklist drops {block}, counted in the file {blocked}: "
      f"{'ALL ACCOUNTED' if blocked == block else f'DIFFERENCE {block - blocked}'}")
held = sum(v for (d, a), v in by.items() if a == "hold")
print(f"kernel holds {hold}, hold records in the file {held} (+{released} released, not written unless events.released)")
EOP
echo "work dir: $w"; trap - EXIT; cleanup
