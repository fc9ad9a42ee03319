#!/usr/bin/env bash
# capture.sh TOOL RATE SECONDS OUT.log [INDEX]
#   TOOL    dns2tcp | iodine | words | beacon
#   RATE    payload bytes/second (beacon: period in seconds)
#   SECONDS how long the payload stream runs
#   OUT.log text log: "UNIXSECS CLIENTIP QNAME" per client DNS query
#   INDEX   1..250, picks addresses 10.77.INDEX.0/30 and 10.200.INDEX.0/27
#           (default: derived from $$). Namespaces are egc-$$ / egs-$$.
# Env: DRAIN (s to wait after the stream, default 20), KEEP_PCAP=1 keeps OUT.pcap,
#      IODINE_OPTS (extra iodine client options), DOMAIN (override the tool domain).
set -u
[ $# -ge 4 ] || { sed -n '2,12p' "$0"; exit 2; }
main() {
TOOL=$1 RATE=$2 SECS=$3 OUT=$4
IDX=${5:-$(( $$ % 250 + 1 ))}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$(python3 -c 'import sys; print(sys.executable)')
LC="$PY $HERE/lc.py"
DRAIN=${DRAIN:-20}
PASS=somepass

CNS=egc-$$ SNS=egs-$$
CV=egc$$ SV=egs$$
CIP=10.77.$IDX.1 SIP=10.77.$IDX.2
TUNIP=10.200.$IDX.1
W=$(mktemp -d /tmp/egcap.$TOOL.XXXXXX)
PIDS=()

case $TOOL in
  dns2tcp) DOMAIN=${DOMAIN:-tunnel.datasync-cdn.net} ;;
  iodine)  DOMAIN=${DOMAIN:-t.cdn-metrics.org} ;;
  words)   DOMAIN=${DOMAIN:-files.wordsync.info} ;;
  beacon)  DOMAIN=${DOMAIN:-update.checkhealth.io} ;;
  *) echo "unknown tool $TOOL" >&2; exit 2 ;;
esac

log() { echo "[$(date +%T) $TOOL/$$] $*" >&2; }

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for ns in $CNS $SNS; do
    for p in $(ip netns pids $ns 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  ip netns del $CNS 2>/dev/null
  ip netns del $SNS 2>/dev/null
  ip link del $CV 2>/dev/null
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bg() { # bg NS LOGNAME cmd...   (run in netns, background, remember pid)
  local ns=$1 name=$2; shift 2
  # stdin: a FIFO opened read-write, never readable and never at EOF.
  # (dns2tcpd select()s on fd 0 and busy-loops at 100% CPU on /dev/null.)
  [ -p "$W/stdin" ] || mkfifo "$W/stdin"
  ip netns exec "$ns" "$@" <>"$W/stdin" >"$W/$name.out" 2>&1 &
  PIDS+=($!)
}
kv() { sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -1; }

# ------------------------------------------------------------- namespaces
ip netns add $CNS && ip netns add $SNS || exit 1
ip link add $CV type veth peer name $SV || exit 1
ip link set $CV netns $CNS && ip link set $SV netns $SNS
ip -n $CNS addr add $CIP/30 dev $CV
ip -n $SNS addr add $SIP/30 dev $SV
for ns in $CNS $SNS; do ip -n $ns link set lo up; done
ip -n $CNS link set $CV up
ip -n $SNS link set $SV up
sleep 0.5

# ---------------------------------------------------------------- capture
bg $CNS tcpdump tcpdump -i $CV -nn -U -Z root -s 0 -w "$W/c.pcap" "udp dst port 53"
TCPDUMP_PID=${PIDS[-1]}
sleep 1.5

CMDS=()
VERSION=""
RECV_FILE=""
STAT=$W/stream.stat

case $TOOL in
dns2tcp)
  VERSION=$(dns2tcpc 2>&1 | grep -m1 "^dns2tcp v")
  cat >"$W/dns2tcpd.conf" <<CONF
listen = $SIP
port = 53
user = root
domain = $DOMAIN
resources = sink:127.0.0.1:9000
CONF
  bg $SNS sink $LC sink 127.0.0.1 9000 "$W/sink.stat"
  C1="dns2tcpd -F -d 1 -f $W/dns2tcpd.conf"
  bg $SNS server $C1
  sleep 1
  C2="dns2tcpc -z $DOMAIN -r sink -l 4444 $SIP"
  bg $CNS client $C2
  sleep 2
  C3="lc.py throttle 127.0.0.1 4444 $RATE $SECS"
  CMDS=("server ns: lc.py sink 127.0.0.1 9000" "server ns: $C1  (conf: $(tr '\n' ';' <"$W/dns2tcpd.conf"))" "client ns: $C2" "client ns: $C3")
  ip netns exec $CNS $LC throttle 127.0.0.1 4444 "$RATE" "$SECS" "$STAT" 2>"$W/throttle.err"
  RECV_FILE=$W/sink.stat
  ;;
iodine)
  VERSION=$(iodine -v 2>&1 | sed -n 's/^version: //p')
  bg $SNS sink $LC sink 0.0.0.0 9000 "$W/sink.stat"
  C1="iodined -f -c -P $PASS -l $SIP -p 53 $TUNIP $DOMAIN"
  bg $SNS server $C1
  sleep 1
  C2="iodine -f -r ${IODINE_OPTS:-} -P $PASS $SIP $DOMAIN"
  bg $CNS client $C2
  ok=
  for i in $(seq 1 90); do
    if ip -n $CNS -4 addr show dev dns0 2>/dev/null | grep -q inet; then ok=1; break; fi
    sleep 1
  done
  [ -n "$ok" ] || { log "iodine tunnel did not come up"; cat "$W/client.out" >&2; exit 1; }
  log "iodine tunnel up after ${i}s"
  C3="lc.py throttle $TUNIP 9000 $RATE $SECS"
  CMDS=("server ns: lc.py sink 0.0.0.0 9000" "server ns: $C1" "client ns: $C2" "client ns: $C3")
  ip netns exec $CNS $LC throttle $TUNIP 9000 "$RATE" "$SECS" "$STAT" 2>"$W/throttle.err"
  RECV_FILE=$W/sink.stat
  ;;
words|beacon)
  VERSION="exfilguard lc.py $TOOL ($(sha1sum "$HERE/lc.py" | cut -c1-12))"
  C1="lc.py responder $SIP $DOMAIN $TOOL"
  bg $SNS server $LC responder $SIP $DOMAIN "$W/resp.stat" $TOOL
  sleep 1
  C2="lc.py $TOOL $SIP $DOMAIN $RATE $SECS"
  CMDS=("server ns: $C1" "client ns: $C2")
  ip netns exec $CNS $LC $TOOL $SIP $DOMAIN "$RATE" "$SECS" "$STAT" 2>"$W/client.err"
  RECV_FILE=$W/resp.stat
  DRAIN=${DRAIN_WB:-3}
  ;;
esac

log "stream done: $(tr '\n' ' ' <"$STAT"); draining ${DRAIN}s"
sleep "$DRAIN"
kill -INT $TCPDUMP_PID 2>/dev/null; sleep 1
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
wait 2>/dev/null

# ---------------------------------------------------------------- convert
conv=$($LC pcap2log "$W/c.pcap" "$W/body.log")
NQ=$(echo "$conv" | sed -n 's/^queries=//p')
ND=$(echo "$conv" | sed -n 's/^distinct=//p')
WRITTEN=$(kv "$STAT" written)
RECEIVED=$(kv "$RECV_FILE" received)
{
  echo "# exfilguard live capture (tools/live-capture/capture.sh)"
  echo "# tool: $TOOL"
  echo "# tool version: $VERSION"
  if [ "$TOOL" = beacon ]; then echo "# period: ${RATE}s (+-10% jitter)"; echo "# rate B/s: n/a (beacon)";
  else echo "# rate B/s: $RATE"; fi
  echo "# seconds: $SECS"
  echo "# payload: os.urandom (incompressible)"
  echo "# payload bytes written: $WRITTEN"
  echo "# received $RECEIVED bytes (at the $( [ "$TOOL" = dns2tcp ] || [ "$TOOL" = iodine ] && echo 'TCP sink' || echo 'responder, decoded'))"
  echo "# payload start: $(kv "$STAT" start)  end: $(kv "$STAT" end)"
  echo "# domain: $DOMAIN"
  echo "# client: $CIP  server: $SIP (veth, netns $CNS -> $SNS)"
  echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host kernel: $(uname -r)"
  echo "# queries: $NQ  distinct names: $ND"
  for c in "${CMDS[@]}"; do echo "# cmd: $c"; done
  echo "# capture: tcpdump -i $CV -nn -U -w c.pcap 'udp dst port 53' (client ns)"
  echo "# format: UNIXSECS CLIENT QNAME (case preserved, RFC1035 \\DDD escapes for non-printable bytes)"
  cat "$W/body.log"
} >"$OUT"
[ -n "${KEEP_PCAP:-}" ] && cp "$W/c.pcap" "${OUT%.log}.pcap"
log "wrote $OUT: queries=$NQ distinct=$ND written=$WRITTEN received=$RECEIVED"
if [ "$TOOL" = dns2tcp ] || [ "$TOOL" = iodine ]; then
  for f in server client; do echo "--- $f.out (tail)" >&2; tail -5 "$W/$f.out" >&2; done
fi
}
main "$@"
exit $?
