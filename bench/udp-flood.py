"""A DNS query flood at a fixed rate that, unlike dnsperf, does not slow down when nothing
answers (dnsperf keeps each lost query outstanding until its timeout and runs out of query
ids): the tunnel flood of bench/flood.sh, whose queries the kernel drops.
Usage: udp-flood.py SERVER QPS SECONDS NAMEFILE SOCKETS   (NAMEFILE: dnsperf's "name TYPE")"""
import socket, sys, time, struct
srv, qps, secs, names, nsock = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
qs = []
for i, line in enumerate(open(names)):
    n, t = line.split()[:2]
    wire = b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"
    qs.append((wire, 16 if t == "TXT" else 1))
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(nsock)]
for s in socks: s.setblocking(False); s.connect((srv, 53))
sent = 0; err = 0; t0 = time.monotonic(); i = 0; qid = 0
while True:
    now = time.monotonic() - t0
    if now >= secs: break
    due = int(now * qps) - sent
    for _ in range(min(due, 2000)):
        w, t = qs[i % len(qs)]; i += 1; qid = (qid + 1) & 0xffff
        pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + w + struct.pack(">HH", t, 1)
        try: socks[i % nsock].send(pkt); sent += 1
        except OSError: err += 1
    if due <= 0: time.sleep(0.0005)
el = time.monotonic() - t0
print(f"sent {sent} in {el:.1f} s = {sent/el:.0f} q/s, send errors {err}")
