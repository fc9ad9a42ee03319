#!/usr/bin/env python3
"""Helpers for capture.sh: TCP sink, rate throttler, word-exfil client, beacon
implant, tiny authoritative responder, and a pcap -> text-log converter.
Standard library only."""
import os, random, socket, struct, sys, threading, time

# 256 common English words (index == byte value). Letters only, unique.
WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat
been beer bell belt best bill bird blow blue boat body bomb bond bone book boom
born boss both bowl bulk burn bush busy call calm came camp card care case cash
cast cell chat chip city club coal coat code cold come cook cool cope copy core
cost crew crop dark data date dawn days dead deal dear debt deep deny desk dial
diet disk done door dose down draw drew drop drug dual duke dust duty each earn
ease east easy edge else even ever exit face fact fail fair fall farm fast fate
fear feed feel feet fell felt file fill film find fine fire firm fish five flat
flow food foot ford form fort four free from fuel full fund gain game gate gave
gear gene gift girl give glad goal goes gold golf gone good gray grew grey grow
gulf hair half hall hand hang hard harm hate have head hear heat held hell help
here hero high hill hire hold hole holy home hope host hour huge hung hunt hurt
idea inch into iron item jack jane jean john join jump jury just keen keep kent
kept kick kill kind king knee knew know lack lady laid lake land lane last late
lead left less life lift like line link list live load loan lock logo long look
lord lose loss lost love luck made mail main make male many mark mass matt meal
""".split()
assert len(WORDS) == 256 and len(set(WORDS)) == 256, len(WORDS)
WIDX = {w: i for i, w in enumerate(WORDS)}


def now():
    return time.time()


def write_kv(path, **kv):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for k, v in kv.items():
            f.write(f"{k}={v}\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- TCP sink
def sink(host, port, stat):
    total = [0]
    lock = threading.Lock()
    write_kv(stat, received=0, connections=0)
    conns = [0]

    def handle(c):
        while True:
            d = c.recv(65536)
            if not d:
                break
            with lock:
                total[0] += len(d)
                write_kv(stat, received=total[0], connections=conns[0])
        c.close()

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(8)
    while True:
        c, _ = s.accept()
        with lock:
            conns[0] += 1
            write_kv(stat, received=total[0], connections=conns[0])
        threading.Thread(target=handle, args=(c,), daemon=True).start()


# ------------------------------------------------------------ rate schedule
def schedule(rate, seconds):
    """Yield (n_bytes) at wall-clock ticks so that exactly rate*seconds bytes
    are produced, rate bytes per second (chunks every 0.1 s if rate >= 10)."""
    interval = 1.0 if rate < 10 else 0.1
    ticks = int(round(seconds / interval))
    t0 = now()
    done = 0
    for k in range(1, ticks + 1):
        dt = t0 + k * interval - now()
        if dt > 0:
            time.sleep(dt)
        target = int(round(rate * k * interval))
        n = target - done
        done = target
        if n > 0:
            yield n


def throttle(host, port, rate, seconds, stat, connect_timeout=120):
    rate = float(rate); seconds = float(seconds)
    deadline = now() + connect_timeout
    while True:
        try:
            s = socket.create_connection((host, int(port)), timeout=10)
            break
        except OSError as e:
            if now() > deadline:
                print(f"throttle: connect failed: {e}", file=sys.stderr)
                sys.exit(1)
            time.sleep(1)
    s.settimeout(None)
    start = now()
    sent = 0
    write_kv(stat, written=0, start=f"{start:.6f}", end="")
    for n in schedule(rate, seconds):
        s.sendall(os.urandom(n))
        sent += n
        write_kv(stat, written=sent, start=f"{start:.6f}", end="")
    end = now()
    write_kv(stat, written=sent, start=f"{start:.6f}", end=f"{end:.6f}")
    time.sleep(2)
    s.close()


# -------------------------------------------------------------- DNS helpers
def build_query(name, qtype=1):
    qid = random.getrandbits(16)
    hdr = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return qid, hdr + q + struct.pack(">HH", qtype, 1)


def send_query(server, name, qtype=1, timeout=2.0):
    qid, pkt = build_query(name, qtype)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(pkt, (server, 53))
        s.recvfrom(4096)
        return True
    except OSError:
        return False
    finally:
        s.close()


def parse_qname(pkt, off=12):
    labels = []
    while True:
        n = pkt[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0:
            raise ValueError("compressed qname")
        labels.append(pkt[off + 1: off + 1 + n])
        off += 1 + n
    return labels, off


def present(labels):
    out = []
    for l in labels:
        s = []
        for b in l:
            if b in (0x2E, 0x5C):
                s.append("\\" + chr(b))
            elif 0x21 <= b <= 0x7E:
                s.append(chr(b))
            else:
                s.append("\\%03d" % b)
        out.append("".join(s))
    return ".".join(out)


# ---------------------------------------------------------------- responder
def split_words(label, k):
    """All-or-nothing parse of label into exactly k words from WORDS."""
    if k == 0:
        return [] if label == "" else None
    for L in range(2, 9):
        w = label[:L]
        if w in WIDX:
            r = split_words(label[L:], k - 1)
            if r is not None:
                return [w] + r
    return None


def responder(host, domain, stat, mode):
    domain = domain.lower().rstrip(".")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 53))
    queries = 0; decoded = 0
    write_kv(stat, queries=0, received=0)
    while True:
        pkt, addr = s.recvfrom(4096)
        try:
            labels, off = parse_qname(pkt)
            qtype, qclass = struct.unpack(">HH", pkt[off:off + 4])
        except Exception:
            continue
        queries += 1
        name = ".".join(l.decode("latin-1") for l in labels).lower()
        inzone = name == domain or name.endswith("." + domain)
        if inzone and mode == "words":
            for l in name[: -len(domain) - 1].split("."):
                ws = split_words(l, 3)
                if ws is None:
                    ws = split_words(l, 2) or split_words(l, 1) or []
                decoded += len(ws)
        elif inzone and mode == "beacon":
            l = labels[0] if len(labels) > len(domain.split(".")) else b""
            if l and len(l) % 2 == 0 and all(c in b"0123456789abcdef" for c in l):
                decoded += len(l) // 2
        qid, flags = struct.unpack(">HH", pkt[:4])
        rflags = 0x8400 | (flags & 0x0100) | (0 if inzone else 3)
        ans = b""
        an = 0
        if inzone and qtype == 1:
            ans = struct.pack(">HHHLH4s", 0xC00C, 1, 1, 60, 4, bytes([127, 0, 0, 1]))
            an = 1
        resp = struct.pack(">HHHHHH", qid, rflags, 1, an, 0, 0) + pkt[12:off + 4] + ans
        s.sendto(resp, addr)
        write_kv(stat, queries=queries, received=decoded)


# ------------------------------------------------------------ words client
def words_client(server, domain, rate, seconds, stat):
    rate = float(rate); seconds = float(seconds)
    per_label = 3
    labels_per_q = 1 if rate < 10 else 2
    chunk = per_label * labels_per_q
    buf = b""; sent = 0; nq = 0
    start = now()

    def emit(data):
        nonlocal nq
        labels = []
        for i in range(0, len(data), per_label):
            labels.append("".join(WORDS[b] for b in data[i:i + per_label]))
        send_query(server, ".".join(labels + [domain]), 1, timeout=1.0)
        nq += 1

    for n in schedule(rate, seconds):
        buf += os.urandom(n)
        while len(buf) >= chunk:
            emit(buf[:chunk]); sent += chunk; buf = buf[chunk:]
        write_kv(stat, written=sent, queries=nq, start=f"{start:.6f}", end="")
    if buf:
        emit(buf); sent += len(buf)
    write_kv(stat, written=sent, queries=nq, start=f"{start:.6f}", end=f"{now():.6f}")


# ----------------------------------------------------------- beacon implant
def beacon(server, domain, period, seconds, stat):
    period = float(period); seconds = float(seconds)
    start = now(); end = start + seconds
    sent = 0; nq = 0; beacons = 0
    t = start + random.uniform(1, 5)
    while t < end:
        time.sleep(max(0, t - now()))
        names = [("%04x" % random.getrandbits(16)) + ".c2." + domain, "poll." + domain]
        types = [1, 16]
        sent += 2
        if random.random() < 0.5:
            names.append(("%08x" % random.getrandbits(32)) + ".r." + domain)
            types.append(1)
            sent += 4
        for n, qt in zip(names, types):
            send_query(server, n, qt, timeout=2.0)
            nq += 1
            time.sleep(random.uniform(0.05, 0.4))
        beacons += 1
        write_kv(stat, written=sent, queries=nq, beacons=beacons, start=f"{start:.6f}", end="")
        t += period * random.uniform(0.9, 1.1)
    write_kv(stat, written=sent, queries=nq, beacons=beacons, start=f"{start:.6f}", end=f"{now():.6f}")


# ------------------------------------------------------------ pcap -> log
def pcap2log(path, out):
    data = open(path, "rb").read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        sys.exit("not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(e + "I", data[20:24])[0]
    off = 24
    n = 0
    names = set()
    with open(out, "w") as f:
        while off + 16 <= len(data):
            ts, frac, incl, orig = struct.unpack(e + "IIII", data[off:off + 16])
            pkt = data[off + 16: off + 16 + incl]
            off += 16 + incl
            if linktype == 1:
                eth = struct.unpack(">H", pkt[12:14])[0]; p = 14
                if eth == 0x8100:
                    eth = struct.unpack(">H", pkt[16:18])[0]; p = 18
            elif linktype == 113:
                eth = struct.unpack(">H", pkt[14:16])[0]; p = 16
            elif linktype == 101:
                eth = 0x0800; p = 0
            else:
                continue
            if eth != 0x0800 or len(pkt) < p + 20:
                continue
            ihl = (pkt[p] & 0x0F) * 4
            if pkt[p + 9] != 17:
                continue
            src = socket.inet_ntoa(pkt[p + 12:p + 16])
            u = p + ihl
            dport = struct.unpack(">H", pkt[u + 2:u + 4])[0]
            if dport != 53:
                continue
            dns = pkt[u + 8:]
            try:
                if len(dns) < 12 or dns[2] & 0x80:
                    continue
                labels, _ = parse_qname(dns)
            except Exception:
                continue
            if not labels:
                continue
            t = ts + frac / (1e9 if nano else 1e6)
            name = present(labels)
            names.add(name)
            f.write(f"{t:.6f} {src} {name}\n")
            n += 1
    print(f"queries={n}\ndistinct={len(names)}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"sink": sink, "throttle": throttle, "responder": responder,
     "words": words_client, "beacon": beacon, "pcap2log": pcap2log}[cmd](*args)
