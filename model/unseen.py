#!/usr/bin/env python3
"""Unseen-evaluation query streams for exfilguard (standard library only, deterministic).

Writes three files under model/eval/:

  unseen_tunnels.tsv   qname, tool, client, qtype   -- per-tool query STREAMS in time order
  unseen_dga.tsv       qname, family, client, kind, rcode  -- DGA output of families NOT in the training data
  benign_lookup.tsv    qname, kind                  -- structurally odd but benign lookup-zone names

None of these tools / families is in ../shared/data (training has dns2tcp, dnscapy, iodine, tuns,
DNSExfiltrator; conficker, cryptolocker, gameover-zeus, matsnu, newgoz, pushdo, ramdo, rovnix, tinba)
nor in the synthetic payload generator (crates/exfilguard/src/dataset.rs `synth_tunnels`).  Nothing is
downloaded: every generator below is written from public descriptions of the wire formats / published
DGA re-implementations, from memory.  Where a detail was not remembered exactly it is approximated and
said so.  All randomness comes from random.Random(fixed seed); re-running gives identical files.

TUNNEL TOOLS (each its own client 10.9.0.N and its own made-up, ordinary-looking .com/.net/.org zone)
  dnscat2          Packets as in dnscat2's protocol doc: packet_id(2) type(1) session_id(2) ...; SYN with
                   ISN + options + session name, ENC INIT (64-byte pubkey) / ENC AUTH (32-byte authenticator),
                   then encrypted MSG packets: nonce(2) + signature(6) + enc(seq(2) ack(2) data); an idle
                   poll is an empty MSG (17 bytes = 34 hex).  Lower-case hex, labels of 62 chars, appended to
                   the zone ("domain mode"), query types chosen at random from TXT/CNAME/MX (second session
                   A/AAAA/TXT).  Polls ~1/s while idle, bursts of full packets when shell output flows, FIN.
                   Approximated: the "dnscat." tag mode (no domain at all) is NOT produced, because such names
                   have no registered domain of their own; exact MAX_FIELD_LENGTH/size maths.
  dnstt            Query = base32 (RFC 4648, no padding, lower-case) of clientID(8) + padding header 0xE0+n +
                   n random bytes + length-prefixed (1 byte) packets, split into 63-char labels, TXT only.
                   Polls use 8 padding bytes, data 3.  Packets are Noise-encrypted KCP segments -> random
                   bytes; many are small (KCP ACKs), uploads are full names (~253 chars).  Two sessions.
  cobaltstrike_dns Beacon DNS: heartbeat A query "<prefix><beacon id hex>.zone"; when tasked the beacon asks
                   for the task with get_A ("cdn.") / get_TXT ("api.") queries carrying a counter + random
                   nonce and the id, sends metadata with put_metadata ("www." / profile "ns1.") and output
                   with put_output ("post."): "post.<n><hex labels>.<counter><nonce>.<id>.zone".  Two
                   beacons (default-like and a malleable profile with "www." heartbeats).  Approximated:
                   the exact nonce/counter layout and max label length (we use <= 62 hex per label).
  sliver_dns       Sliver >=1.5 DNS C2: protobuf DNSMessage{ID, Type, Start, Stop, Size, Data} encoded with
                   base58 (case-preserving resolvers) or Sliver's own base32 alphabet
                   "ab1c2d3e4f5g6h7j8k9m0npqrtuvwxyz" (case-insensitive resolvers), 63-char labels; TOTP,
                   INIT (key exchange, chunked with Start/Stop), frequent POLLs with encrypted nonce,
                   DATA_FROM_IMPLANT over A queries, MANIFEST/DATA_TO_IMPLANT fetches over TXT.
                   Approximated: protobuf field numbers / message-type numbers, chunk sizes.
  godoh            godoh (sensepost) over DoH: data queries
                   "<hexdata labels 18..60>.<crc32>.<seq>.<type be|ef|ca>.<ident>.zone" (stream start/data/end),
                   gzip+AES payload -> random hex; TXT checkin polls "<ident>.<nonce>.zone".
                   Approximated: the label order and poll format.
  hex_c2           Generic C2: one or more hex labels of 18..60 characters (session id + seq + data), A/TXT/
                   CNAME polls of 18..30 hex with a nonce.
  powershell_dnsmessenger  DNSMessenger-like PowerShell implant: TXT only, short alphanumeric ids (4..8 chars)
                   plus decimal counters, word-like prefixes (mail/www/ns1...), and output chunks that are
                   alphanumeric-stripped command output (very low entropy) or short hex.  Approximated: the
                   real stage-4 naming scheme is not reproduced byte for byte.
  dotnet_implant   .NET implant: base64url (no padding, '-' and '_' kept) data labels of 40..63 chars, with
                   decimal counter and base36 session id; a second session in base36; A/AAAA/TXT.
  apt_lowvolume    Low-volume APT C2 a la DNSpionage / OilRig ALMA Communicator: ~200 queries, a fixed id
                   prefix, short hex chunks (DNSpionage-like) or "<id>-<seq>-<base36 chunk>" (ALMA-like),
                   A queries, rare polls.  Approximated: neither tool's exact encoding.
  dnsexfil_words   Dictionary-token exfiltration (heyoka/"words" encoders): each payload byte maps to one of
                   256 words (PGP-word-list style, drawn deterministically from the word list), labels of
                   words with a sequence counter; second session in base36.
  Payloads are mostly random bytes (encrypted/compressed), some plain text (command output).

DGA FAMILIES (client 10.8.0.N, kind random|wordlist), re-implemented after the published reversing
(J. Bader's domain_generation_algorithms write-ups and others), seeded by dates (or fixed seeds where
the real malware uses a fixed seed):
  banjori   exact next_domain() recurrence on the first four letters of a seed domain (4 seeds).
  corebot   LCG 1664525/1013904223 over the date + index, length 12..23, charset a..y0..8 (the real
            off-by-one range bug kept), .ddns.net.
  dircrypt  Park-Miller minimal-standard rand over a fixed seed, length 8..11, a..y, .com.
  kraken    glibc-style LCG (1103515245, 12345), crop (r>>8)%32768, length 6..11, tld com/net/tv/cc.
  locky     Locky v2: rol/ror with 0xB11924E1 / 0x27100001 mixing of year/month/day/seed, length 7..17.
  murofet   Zeus/Licat-like: md5 of (year, month, day, index) -> letters from each hash byte (two per
            byte); approximated byte mapping, tlds biz/info/org/net/com/ru.
  necurs    exact 64-bit pseudo_random() loop, 4-day seed windows, length 7..21, 43 tlds.
  nymaim    approximated: xorshift128 state seeded by date + key, length 5..12, nymaim-ish tlds.
  pykspa    pykspa-precursor get_sld() arithmetic, seed = days/2 windows; approximated length/tld choice.
  qakbot    Mersenne Twister (Python's random, as qakbot uses MT19937) seeded with crc32 of a 10-day
            date string + salt, length 8..25, com/net/org/info/biz.
  ramnit    exact Park-Miller rand with the seed_a*seed_b reseed step, length 8..19, .com (3 seeds).
  ranbyus   exact shift/xor recurrences on day/month/year/seed, 14 letters, in/me/cc/su/tw/net/com/pw/org.
  simda     approximated: consonant/vowel alternation from a seeded rand, length 7..11.
  symmi     approximated: MSVC rand seeded by date, consonant+vowel pairs, .ddns.net.
  suppobox  wordlist: seed = unixtime >> 9 (changes ~8.5 h), two words from a 384-word list, .net/.com.
  gozi      wordlist: LCG 1664525/1013904223 seeded by (flag<<16) + days_since_2015/10 - 306607824,
            words (sometimes halved) concatenated to 12..23 chars, .com/.ru (words stand in for the
            GPL/RFC/bible text the real family uses).
  nymaim2   wordlist: md5 hash-string chain seeded by md5(seed)+year+yday, first-word + optional '-' +
            second-word, tld from a list.
  pizd      wordlist: MSVC LCG seeded by day, two (sometimes three) words from its own list, .net.
  Wordlists come from /usr/share/dict/words if present, else crates/exfilguard-detect/assets/words.txt;
  each family draws its own deterministic sub-list (so lists differ from matsnu's).

BENIGN LOOKUP NAMES (~3000): PTR (in-addr.arpa full and partial, ip6.arpa 32 nibbles with real prefixes),
DNSBL (IPv4 reversed, IPv6 nibbles), RHSBL, hash lookups (Team Cymru MHR md5, Spamhaus HBL), SRV/DNS-SD,
DKIM (named selectors, Amazon SES 32-char tokens, Microsoft 365 selectors), _dmarc, _acme-challenge,
_mta-sts/_smtp._tls, ENUM e164.arpa.

Every name is checked: labels 1..63 chars of [A-Za-z0-9_-], total <= 253.
"""
import base64
import datetime as dt
import hashlib
import os
import random
import re
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "eval")
REPO = os.path.dirname(HERE)

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
# slurs / obscenities kept out of generated names (the dictionary contains them)
BLOCK = ("fag", "nigg", "cunt", "rape", "whore", "slut", "kike", "spic", "dyke", "bitch", "fuck", "shit",
         "negro", "retard", "gook", "chink", "wetback", "tranny", "porn", "penis", "vagin", "anal", "nazi")


def load_words():
    for path in ("/usr/share/dict/words",
                 os.path.join(REPO, "crates/exfilguard-detect/assets/words.txt")):
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="ignore") as f:
                ws = [w.strip() for w in f if w.strip() and not w.startswith("#")]
            ws = sorted({w.lower() for w in ws if re.fullmatch(r"[a-z]{3,15}", w.lower())})
            ws = [w for w in ws if not any(b in w for b in BLOCK)]
            if ws:
                return ws, path
    sys.exit("no word list found")


WORDS, WORDS_PATH = load_words()

LABEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


def valid(name):
    if not name or len(name) > 253:
        return False
    return all(LABEL_RE.match(l) for l in name.split("."))


def chunks(s, n):
    return [s[i:i + n] for i in range(0, len(s), n)]


def b32l(b):
    return base64.b32encode(b).decode().rstrip("=").lower()


def b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SLIVER_B32 = "ab1c2d3e4f5g6h7j8k9m0npqrtuvwxyz"


def base_n(b, alphabet):
    """Big-integer base conversion (base58 / base36); leading zero bytes -> alphabet[0]."""
    n = int.from_bytes(b, "big")
    out = []
    base = len(alphabet)
    while n:
        n, r = divmod(n, base)
        out.append(alphabet[r])
    pad = len(b) - len(b.lstrip(b"\0"))
    return alphabet[0] * pad + "".join(reversed(out))


def sliver_b32(b):
    std = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    s = base64.b32encode(b).decode().rstrip("=")
    return s.translate(str.maketrans(std, SLIVER_B32))


def max_chars(zone, label_len, extra_prefix=0):
    """Largest number of payload characters c whose labels (of label_len) fit with the zone."""
    avail = 253 - len(zone) - 1 - extra_prefix
    c = avail
    while c > 0 and c + (c + label_len - 1) // label_len - 1 > avail:
        c -= 1
    return c


TEXT_TOKENS = ["C:\\Users\\Administrator\\Documents", "Volume Serial Number is 4A1F-9C2E", "Directory of",
               "<DIR>", "File(s)", "bytes free", "NT AUTHORITY\\SYSTEM", "svchost.exe", "explorer.exe",
               "lsass.exe", "Image Name", "PID", "Session Name", "Mem Usage", "uid=0(root) gid=0(root)",
               "drwxr-xr-x", "-rw-r--r--", "/etc/passwd", "root:x:0:0:root:/root:/bin/bash",
               "Ethernet adapter", "IPv4 Address", "Subnet Mask", "Default Gateway", "password=",
               "username=", "BEGIN RSA PRIVATE KEY", "Windows IP Configuration", "HOSTNAME", "DOMAIN"]


def text_bytes(rng, n):
    parts = []
    size = 0
    while size < n:
        t = rng.choice(TEXT_TOKENS) if rng.random() < 0.4 else rng.choice(WORDS)
        if rng.random() < 0.15:
            t = str(rng.randrange(0, 100000))
        parts.append(t)
        parts.append(rng.choice([" ", " ", "  ", "\r\n", "\t"]))
        size += len(t) + 1
    return "".join(parts).encode()[:n]


def payload(rng, n, text_p=0.12):
    """Mostly encrypted/compressed (uniform random) bytes, sometimes plain text."""
    if n <= 0:
        return b""
    if rng.random() < text_p:
        return text_bytes(rng, n)
    return rng.randbytes(n)


def name(labels, zone):
    return ".".join([l for l in labels if l] + [zone])


# ----------------------------------------------------------------------------------------------
# tunnel / C2 tools
# ----------------------------------------------------------------------------------------------
def gen_dnscat2(rng, zone):
    out = []

    def session(n_queries, qtypes):
        sid = rng.getrandbits(16)
        seq = rng.getrandbits(16)
        ack = 0
        nonce = 0
        cap_hex = max_chars(zone, 62)
        cap_bytes = cap_hex // 2

        def emit(pkt):
            h = pkt.hex()
            out.append((name(chunks(h, 62), zone), rng.choice(qtypes)))

        def pid():
            return struct.pack(">H", rng.getrandbits(16))

        # SYN: packet_id, type 0x00, session id, ISN, options (0x0001 = name), name\0
        sess_name = rng.choice([b"cmd.exe", b"/bin/sh", b"shell", b"command (DESKTOP-7Q2K1MS)", b"sh"])
        for _ in range(rng.randrange(1, 3)):  # SYN is retransmitted until answered
            emit(pid() + b"\x00" + struct.pack(">HHH", sid, seq, 1) + sess_name + b"\0")
        # ENC INIT (subtype 0, flags 0, 64-byte public key) and ENC AUTH (subtype 1, 32-byte authenticator)
        emit(pid() + b"\x03" + struct.pack(">HHH", sid, 0, 0) + rng.randbytes(64))
        emit(pid() + b"\x03" + struct.pack(">HHH", sid, 1, 0) + rng.randbytes(32))
        start = len(out)
        burst = 0
        while len(out) - start < n_queries:
            if burst == 0 and rng.random() < 0.05:
                burst = int(rng.expovariate(1 / 14)) + 2
            if burst:
                burst -= 1
                full = rng.random() < 0.8 or burst == 0
                dlen = (cap_bytes - 17) if full else rng.randrange(1, 40)
                data = payload(rng, dlen, text_p=0.0)  # ciphertext on the wire
            else:
                data = b""
                if rng.random() < 0.08:  # server pushed a command; client acks it
                    ack = (ack + rng.randrange(4, 120)) & 0xFFFF
            nonce = (nonce + 1) & 0xFFFF
            body = struct.pack(">HH", seq, ack) + data
            enc = rng.randbytes(len(body))  # salsa20 ciphertext of seq/ack/data
            emit(pid() + b"\x01" + struct.pack(">HH", sid, nonce) + rng.randbytes(6) + enc)
            seq = (seq + len(data)) & 0xFFFF
        emit(pid() + b"\x02" + struct.pack(">H", sid) + b"Session closed\0")

    session(900, [16, 5, 15])
    session(480, [1, 28, 16])
    return out


def gen_dnstt(rng, zone):
    out = []
    cap = max_chars(zone, 63) * 5 // 8  # bytes that fit once base32-encoded

    def session(n):
        cid = rng.randbytes(8)
        upload = 0
        start = len(out)
        while len(out) - start < n:
            r = rng.random()
            if upload == 0 and rng.random() < 0.03:
                upload = int(rng.expovariate(1 / 25)) + 3
            if upload:
                upload -= 1
                pad = 3
                room = cap - 8 - 1 - pad
                pkts = []
                left = room
                while left > 30:
                    size = min(left - 1, rng.choice([left - 1, 24 + 16, rng.randrange(40, 120)]), 223)
                    pkts.append(rng.randbytes(size))
                    left -= size + 1
                    if rng.random() < 0.5:
                        break
            elif r < 0.55:
                pad, pkts = 8, []  # poll
            else:
                pad = 3
                pkts = [rng.randbytes(rng.choice([40, 40, 48, 56, rng.randrange(24, 100)]))]  # KCP ACKs
            raw = cid + bytes([0xE0 + pad]) + rng.randbytes(pad) + b"".join(bytes([len(p)]) + p for p in pkts)
            out.append((name(chunks(b32l(raw), 63), zone), 16))

    session(800)
    session(600)
    return out


def gen_cobaltstrike(rng, zone):
    out = []

    def beacon(n, prof):
        bid = "%x" % (rng.randrange(0x1000000, 0x7FFFFFFF) & ~1)
        counter = rng.randrange(0, 0x100)

        def ctr():
            nonlocal counter
            counter = (counter + 1) & 0xFFFFF
            return "%x%05x" % (counter, rng.getrandbits(20))

        def put(prefix, data):
            # data hex in labels of <= 62, first label led by the label count digit
            h = data.hex()
            room = max_chars(zone, 62, len(prefix) + 1 + 12 + 1 + len(bid) + 1)
            for part in chunks(h, min(room, 3 * 62)):
                labels = chunks(part, 62)
                labels[0] = str(len(labels)) + labels[0]
                if len(labels[0]) > 63:
                    labels = [labels[0][:1]] + chunks(part, 62)
                out.append((name([prefix.rstrip(".")] + labels + [ctr(), bid], zone), 1))

        # initial metadata (RSA-encrypted blob, 128 bytes)
        out.append((name([prof["beacon"].rstrip("."), bid], zone), 1))
        put(prof["put_metadata"], rng.randbytes(128))
        start = len(out)
        while len(out) - start < n:
            out.append((name([prof["beacon"].rstrip("."), bid], zone), 1))  # heartbeat
            if rng.random() < 0.12:  # tasked
                if prof["mode"] == "txt":
                    tlen = rng.randrange(60, 1200)
                    out.append((name([prof["get_A"].rstrip("."), ctr(), bid], zone), 1))  # task length
                    for _ in range((tlen + 188) // 189):
                        out.append((name([prof["get_TXT"].rstrip("."), ctr(), bid], zone), 16))
                else:
                    tlen = rng.randrange(16, 200)
                    for _ in range((tlen + 3) // 4 + 1):
                        out.append((name([prof["get_A"].rstrip("."), ctr(), bid], zone), 1))
                olen = int(rng.expovariate(1 / 1500)) + 40
                put(prof["put_output"], payload(rng, olen, text_p=0.0))

    beacon(800, dict(beacon="", get_A="cdn.", get_TXT="api.", put_metadata="www.", put_output="post.",
                     mode="txt"))
    beacon(650, dict(beacon="www.", get_A="cdn.", get_TXT="api.", put_metadata="ns1.", put_output="post.",
                     mode="a"))
    return out


def pb_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_msg(mid, mtype, start=0, stop=0, size=0, data=b""):
    m = b"\x08" + pb_varint(mid) + b"\x10" + pb_varint(mtype)
    if start:
        m += b"\x18" + pb_varint(start)
    if stop:
        m += b"\x20" + pb_varint(stop)
    if size:
        m += b"\x28" + pb_varint(size)
    if data:
        m += b"\x32" + pb_varint(len(data)) + data
    return m


def gen_sliver(rng, zone):
    out = []
    NOP, TOTP, INIT, POLL, CLOSED, MANIFEST, DATA_FROM, DATA_TO = 0, 1, 2, 3, 4, 5, 6, 7

    def session(n, enc_name):
        enc = (lambda b: base_n(b, B58)) if enc_name == "b58" else sliver_b32
        ratio = 1.3658 if enc_name == "b58" else 1.6
        cap = int(max_chars(zone, 63) / ratio) - 2

        def emit(msg, qt):
            out.append((name(chunks(enc(msg), 63), zone), qt))

        def send(mtype, data):
            mid = rng.getrandbits(32) & ~0xFF
            room = cap - 22
            total = len(data)
            for off in range(0, total, room):
                part = data[off:off + room]
                emit(pb_msg(mid | (off // room), mtype, off, off + len(part), total, part), 1)

        emit(pb_msg(rng.randrange(10000000, 99999999), TOTP), 1)
        send(INIT, rng.randbytes(rng.randrange(180, 260)))
        start = len(out)
        while len(out) - start < n:
            r = rng.random()
            if r < 0.07:  # task arrives: manifest + fetch chunks, then upload result
                mid = rng.getrandbits(32) & ~0xFF
                out.append((name(chunks(enc(pb_msg(mid, MANIFEST)), 63), zone), 16))
                size = rng.randrange(100, 2000)
                for off in range(0, size, 180):
                    emit(pb_msg(mid, DATA_TO, off, min(size, off + 180)), 16)
                send(DATA_FROM, payload(rng, int(rng.expovariate(1 / 900)) + 60, text_p=0.0))
            else:
                emit(pb_msg(rng.getrandbits(32) & ~0xFF, POLL, data=rng.randbytes(rng.choice([24, 28, 32]))), 16)
        emit(pb_msg(rng.getrandbits(32), CLOSED), 1)

    session(800, "b58")
    session(600, "b32")
    return out


def gen_godoh(rng, zone):
    out = []

    def agent(n):
        ident = "%08x" % rng.getrandbits(32)
        start = len(out)
        while len(out) - start < n:
            out.append((name(["%x" % rng.getrandbits(40), ident], zone), 16))  # checkin poll
            if rng.random() < 0.15:  # command output stream
                data = zlib.compress(text_bytes(rng, rng.randrange(100, 3000)))
                data = rng.randbytes(16) + rng.randbytes(((len(data) // 16) + 1) * 16)  # IV + AES-CBC
                crc = "%08x" % zlib.crc32(data)
                h = data.hex()
                out.append((name(["%x" % len(data), crc, "0", "be", ident], zone), 1))
                pos, seq = 0, 1
                while pos < len(h):
                    k = rng.randrange(1, 4)
                    labels = []
                    for _ in range(k):
                        ln = rng.randrange(18, 61)
                        if pos >= len(h):
                            break
                        labels.append(h[pos:pos + ln])
                        pos += ln
                    out.append((name(labels + [crc, "%x" % seq, "ef", ident], zone), 1))
                    seq += 1
                out.append((name([crc, "%x" % seq, "ca", ident], zone), 1))

    agent(800)
    agent(600)
    return out


def gen_hex_c2(rng, zone):
    out = []
    sid = "%04x" % rng.getrandbits(16)
    seq = 0
    while len(out) < 1300:
        seq += 1
        if rng.random() < 0.45:
            ln = rng.randrange(18, 31)
            lab = (sid + "%04x" % (seq & 0xFFFF) + rng.randbytes(16).hex())[:ln]
            out.append((name([lab], zone), rng.choice([1, 16, 5])))
        else:
            k = rng.choice([1, 1, 2, 2, 3])
            labels = []
            for i in range(k):
                ln = rng.randrange(18, 61)
                d = payload(rng, ln // 2 + 1, text_p=0.15).hex()
                labels.append(d[:ln])
            labels[0] = (sid + "%04x" % (seq & 0xFFFF) + labels[0])[:60]
            out.append((name(labels, zone), rng.choice([1, 16, 16, 5])))
    return out


def gen_dnsmessenger(rng, zone):
    out = []
    prefixes = ["www", "mail", "ns1", "ns2", "ftp", "smtp", "cdn", "api", "img", "web"]
    sid = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(4, 9)))
    out.append((name([sid], zone), 16))
    c = 0
    while len(out) < 1200:
        c += 1
        r = rng.random()
        if r < 0.55:
            out.append((name([rng.choice(prefixes) + str(c % 100), sid], zone), 16))
        elif r < 0.7:
            tok = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(4, 9)))
            out.append((name([tok, str(c)], zone), 16))
        else:  # output chunk
            if rng.random() < 0.55:
                t = re.sub(r"[^a-z0-9]", "", text_bytes(rng, 60).decode().lower())
                chunk = t[:rng.randrange(8, 21)] or "null"
            else:
                chunk = rng.randbytes(rng.randrange(4, 9)).hex()
            out.append((name([str(c), chunk, sid], zone), 16))
    return out


def gen_dotnet(rng, zone):
    out = []

    def session(n, mode):
        sid = base_n(rng.randbytes(4), B36)[:6]
        ctr = 0
        start = len(out)
        while len(out) - start < n:
            ctr += 1
            if rng.random() < 0.4:  # poll / beacon
                out.append((name([str(ctr), sid], zone), rng.choice([1, 28, 16])))
                continue
            k = rng.choice([1, 2, 2, 3])
            labels = []
            for _ in range(k):
                if mode == "b64":
                    labels.append(b64url(payload(rng, rng.randrange(30, 48), text_p=0.1))[:63])
                else:
                    labels.append(base_n(b"\x01" + payload(rng, rng.randrange(25, 39), text_p=0.1), B36)[:63])
            out.append((name(labels + [str(ctr), sid], zone), rng.choice([1, 28, 16])))

    session(800, "b64")
    session(500, "b36")
    return out


def gen_apt_lowvolume(rng, zone):
    out = []
    # DNSpionage-like: fixed 4-hex campaign prefix + 4-hex host id + 2-hex seq + short hex chunk
    pre, host = "0ffd", "%04x" % rng.getrandbits(16)
    seq = 0
    while len(out) < 100:
        seq = (seq + 1) & 0xFF
        if rng.random() < 0.35:
            out.append((name([pre + host + "%04x" % rng.getrandbits(16)], zone), 1))
        else:
            d = payload(rng, rng.randrange(5, 13), text_p=0.3).hex()
            out.append((name([pre + host + "%02x" % seq + d], zone), 1))
    # ALMA-like: "<id>-<seq>-<base36 chunk>"
    aid = base_n(rng.randbytes(3), B36)[:5]
    seq = 0
    while len(out) < 200:
        seq += 1
        if rng.random() < 0.3:
            out.append((name([aid + "-0-" + str(rng.randrange(1000, 9999))], zone), 1))
        else:
            d = base_n(b"\x01" + payload(rng, rng.randrange(6, 14), text_p=0.3), B36)
            out.append((name([aid + "-" + str(seq) + "-" + d], zone), 1))
    return out


def gen_words(rng, zone):
    out = []
    pool = [w for w in WORDS if 3 <= len(w) <= 7]
    table = random.Random(4242).sample(pool, 256)

    def session_words(n):
        sid = rng.choice(pool)
        seq = 0
        start = len(out)
        while len(out) - start < n:
            seq += 1
            if rng.random() < 0.2:
                out.append((name(["sync" + str(seq), sid], zone), 1))
                continue
            data = payload(rng, rng.randrange(6, 24), text_p=0.3)
            words = [table[b] for b in data]
            labels, cur = [], ""
            for w in words:
                sep = "-" if (cur and rng.random() < 0.3) else ""
                if len(cur) + len(sep) + len(w) > 60:
                    labels.append(cur)
                    cur = w
                else:
                    cur += sep + w
            labels.append(cur)
            nm = name([str(seq)] + labels + [sid], zone)
            if len(nm) <= 253:
                out.append((nm, rng.choice([1, 1, 16])))

    def session_b36(n):
        seq = 0
        start = len(out)
        while len(out) - start < n:
            seq += 1
            d = base_n(b"\x01" + payload(rng, rng.randrange(10, 60), text_p=0.3), B36)
            out.append((name(chunks(d, rng.randrange(30, 64)) + ["%x" % seq], zone), 1))

    session_words(900)
    session_b36(400)
    return out


TOOLS = [
    ("dnscat2", "static-cdn-assets.net", gen_dnscat2),
    ("dnstt", "cloud-metrics-api.com", gen_dnstt),
    ("cobaltstrike_dns", "azure-edge-content.com", gen_cobaltstrike),
    ("sliver_dns", "fastly-img-cache.net", gen_sliver),
    ("godoh", "docs-sharepoint-sync.com", gen_godoh),
    ("hex_c2", "analytics-tracker-cdn.com", gen_hex_c2),
    ("powershell_dnsmessenger", "office365-licensing.org", gen_dnsmessenger),
    ("dotnet_implant", "nuget-mirror-cache.net", gen_dotnet),
    ("apt_lowvolume", "eweather-forecast.net", gen_apt_lowvolume),
    ("dnsexfil_words", "blog-wordpress-hosting.com", gen_words),
]


# ----------------------------------------------------------------------------------------------
# DGA families
# ----------------------------------------------------------------------------------------------
def dates(start, n, step=1):
    d0 = dt.date(*start)
    return [d0 + dt.timedelta(days=i * step) for i in range(n)]


def rol32(v, s):
    v &= M32
    return ((v << s) | (v >> (32 - s))) & M32


def ror32(v, s):
    v &= M32
    return ((v >> s) | (v << (32 - s))) & M32


def dga_banjori():
    def m(s):
        return ord("a") + ((s - ord("a")) % 26)

    for seed in ["earnestnessbiophysicalohax.com", "kwtoestnessbiophysicalohax.com",
                 "andersensinaix.com", "onsgtsuwbpbqmrcbkrhhjgmihrv.com"]:
        d = seed
        for _ in range(200):
            dl = [ord(x) for x in d]
            dl[0] = m(dl[0] + dl[3])
            dl[1] = m(dl[0] + 2 * dl[1])
            dl[2] = m(dl[0] + dl[2] - 1)
            dl[3] = m(dl[1] + dl[2] + dl[3])
            d = "".join(map(chr, dl))
            yield d


def dga_corebot():
    charset = [chr(x) for x in range(ord("a"), ord("z"))] + [chr(x) for x in range(ord("0"), ord("9"))]
    for d in dates((2024, 3, 1), 20):
        for nr_b in range(40):
            r = (0x1DBA8930 + d.year + ((nr_b << 16) + (d.month << 8) | d.day)) & M32
            r = (1664525 * r + 1013904223) & M32
            ln = 0xC + r % (0x18 - 0xC)
            s = ""
            for _ in range(ln):
                r = (1664525 * r + 1013904223) & M32
                s += charset[r % len(charset)]
            yield s + ".ddns.net"


def park_miller(state):
    ix = state
    ix = (16807 * (ix % 127773) - 2836 * (ix // 127773)) & M32
    return ix


def dga_dircrypt():
    for seed in (0x2A84C0E3, 0x6E5B7A20):
        s = seed
        for _ in range(350):
            s = park_miller(s)
            ln = s % 4 + 8
            d = ""
            for _ in range(ln):
                s = park_miller(s)
                d += chr(ord("a") + s % 25)
            yield d + ".com"


def dga_kraken():
    tlds = ["com", "net", "tv", "cc"]
    for seed in (24938314, 1600000):
        for index in range(350):
            r = (3 * index + seed) & M32
            r = (1103515245 * r + 12345) & M32
            ln = ((r // 256) % 32768) % 6 + 6
            d = ""
            for _ in range(ln):
                r = (1103515245 * r + 12345) & M32
                d += chr(((r // 256) % 32768) % 26 + ord("a"))
            r = (1103515245 * r + 12345) & M32
            yield d + "." + tlds[((r // 256) % 32768) % 4]


def dga_locky():
    tlds = ["ru", "info", "biz", "click", "su", "work", "pl", "org", "pw", "xyz"]
    seed, shift = 7, 7
    for date in dates((2024, 2, 1), 60, 2):
        for dnr in range(12):
            seed_shifted = rol32(seed, 17)
            dnr_shifted = rol32(dnr, 21)
            k = 0
            year = date.year
            for _ in range(7):
                t0 = ror32(0xB11924E1 * (year + k + 0x1BF5), shift)
                t1 = ((t0 + 0x27100001) ^ k) & M32
                t2 = ror32(0xB11924E1 * (t1 + seed), shift)
                t3 = ((t2 + 0x27100001) ^ t1) & M32
                t4 = ror32(0xB11924E1 * (date.day // 2 + t3), shift)
                t5 = (0xD8EFFFFF - t4 + t3) & M32
                t6 = ror32(0xB11924E1 * (date.month + t5 - 0x65CAD), shift)
                t7 = (t5 + t6 + 0x27100001) & M32
                t8 = ror32(0xB11924E1 * (t7 + seed_shifted + dnr_shifted), shift)
                k = ((t8 + 0x27100001) ^ t7) & M32
                year += 1
            ln = k % 11 + 7
            d = ""
            for i in range(ln):
                k = (ror32(0xB11924E1 * rol32(k, i), shift) + 0x27100001) & M32
                d += chr(k % 25 + ord("a"))
            k = ror32(k * 0xB11924E1, shift)
            yield d + "." + tlds[((k + 0x27100001) & M32) % len(tlds)]


def dga_murofet():
    tlds = ["biz", "info", "org", "net", "com", "ru"]
    for date in dates((2024, 1, 10), 6):
        for i in range(120):
            h = hashlib.md5(struct.pack("<HBBHH", date.year, date.month, date.day, i, 0x30)).digest()
            d = ""
            for b in h:
                c1 = (b & 0x1F) + ord("a")
                c2 = (b >> 3) + ord("a")
                if c1 != c2 and c1 <= ord("z"):
                    d += chr(c1)
                if c2 <= ord("z"):
                    d += chr(c2)
            yield d + "." + tlds[i % 6]


def necurs_pr(v):
    for i in range((v & 0x7F) + 21):
        v = (v + (((v * 7) ^ (v << 15)) + 8 * i - (v >> 5))) & M64
    return v


def dga_necurs():
    tlds = ["tj", "in", "jp", "tw", "ac", "cm", "la", "mn", "so", "sh", "sc", "nu", "nf", "mu", "ms", "mx",
            "ki", "im", "cx", "cc", "tv", "bz", "me", "eu", "de", "ru", "co", "su", "pw", "kz", "sx", "us",
            "ug", "ir", "to", "ga", "com", "net", "org", "biz", "xxx", "pro", "bit"]
    seed = 9
    for date in dates((2024, 4, 1), 5, 4):
        for nr in range(130):
            n = necurs_pr(date.year)
            n = necurs_pr(n + date.month + 43690)
            n = necurs_pr(n + (date.day >> 2))
            n = necurs_pr(n + nr)
            n = necurs_pr(n + seed)
            ln = n % 15 + 7
            d = ""
            for i in range(ln):
                n = necurs_pr(n + i)
                d += chr(n % 25 + ord("a"))
                n = necurs_pr((n + 0xABBEDF) & M64)
            yield d + "." + tlds[n % 43]


def dga_nymaim():
    tlds = ["com", "net", "in", "pw", "ru", "info", "biz", "cn", "kz", "org"]
    for date in dates((2024, 5, 2), 12):
        st = list(struct.unpack("<4I", hashlib.md5(b"%d-%d-%d-\x07\x1c\x9e" % (date.year, date.month,
                                                                             date.day)).digest()))

        def rnd():
            t = st[0] ^ ((st[0] << 11) & M32)
            st[0], st[1], st[2] = st[1], st[2], st[3]
            st[3] = (st[3] ^ (st[3] >> 19) ^ t ^ (t >> 8)) & M32
            return st[3]

        for _ in range(60):
            ln = rnd() % 8 + 5
            yield "".join(chr(ord("a") + rnd() % 26) for _ in range(ln)) + "." + tlds[rnd() % len(tlds)]


def dga_pykspa():
    tlds = ["com", "net", "org", "info", "cc"]

    def get_sld(length, seed):
        sld = ""
        modulo = 541 * length + 4
        a = length * length
        for i in range(length):
            idx = (a + (seed * ((seed % 5) + (seed % 123456) + i * ((seed & 1) + (seed % 4567))) & M32)) % 26
            a = (a + length) & M32
            sld += chr(ord("a") + idx)
            seed = (seed + (((7837632 * seed * length) & M32) + 82344) % modulo) & M32
        return sld

    epoch = dt.date(1970, 1, 1)
    for date in dates((2024, 1, 2), 12, 2):
        sv = (date - epoch).days // 2
        for i in range(60):
            s = (sv * 0x10DCD + i * 0x9E37) & M32
            s = (s ^ (s >> 13)) * 0x5BD1E995 & M32
            yield get_sld(s % 7 + 6, s) + "." + tlds[(s >> 8) % len(tlds)]


def dga_qakbot():
    tlds = ["com", "net", "org", "info", "biz", "org"]
    for date in dates((2024, 1, 1), 6, 10):
        bucket = "%d.%s.%d" % ((date.day - 1) // 10, date.strftime("%b").lower(), date.year)
        for salt in (0, 1):
            rng = random.Random(zlib.crc32((bucket + str(salt)).encode()))
            for _ in range(55):
                ln = rng.randint(8, 25)
                yield "".join(chr(rng.randint(ord("a"), ord("z"))) for _ in range(ln)) + "." + rng.choice(tlds)


def dga_ramnit():
    for seed in (0x4F2D82A9, 0x79159C10, 0x0E0BA1E2):
        v = seed
        for _ in range(220):
            seed_a = v
            v = park_miller(v)
            ln = v % 12 + 8
            seed_b = v
            d = ""
            for _ in range(ln):
                v = park_miller(v)
                d += chr(ord("a") + v % 25)
            mm = seed_a * seed_b
            v = (mm + mm // (2 ** 32)) % (2 ** 32)
            yield d + ".com"


def dga_ranbyus():
    tlds = ["in", "me", "cc", "su", "tw", "net", "com", "pw", "org"]
    for date in dates((2024, 6, 1), 14):
        day, month, year, seed = date.day, date.month, date.year, 0x2E6B5F19
        for nr in range(45):
            d = ""
            for _ in range(14):
                day = ((day >> 15) ^ 16 * (day & 0x1FFF ^ 4 * (seed ^ day))) & M32
                year = ((((year & 0xFFFFFFF0) << 17) & M32) ^ ((year ^ (7 * year & M32)) >> 11)) & M32
                month = ((14 * (month & 0xFFFFFFFE)) & M32 ^ ((month ^ (4 * month & M32)) >> 8)) & M32
                seed = ((seed >> 6) ^ (((day + 8 * seed) << 8) & 0x3FFFF00)) & M32
                d += chr(((day ^ month ^ year) % 25) + 97)
            yield d + "." + tlds[nr % 8]


def msvc_rand(state):
    state[0] = (state[0] * 214013 + 2531011) & M32
    return (state[0] >> 16) & 0x7FFF


def dga_simda():
    cons, vow = "qwrtpsdfghjklzxcvbnm", "eyuioa"
    tlds = ["com", "net", "org", "info", "cc"]
    for date in dates((2024, 2, 10), 10, 3):
        st = [0x5A3C0D1F ^ (date.toordinal() * 0x9E3779B1 & M32)]
        for _ in range(60):
            ln = msvc_rand(st) % 5 + 7
            d = "".join((cons if j % 2 == 0 else vow)[msvc_rand(st) % (20 if j % 2 == 0 else 6)]
                        for j in range(ln))
            yield d + "." + tlds[msvc_rand(st) % 5]


def dga_symmi():
    cons, vow = "bcdfghjklmnpqrstvwxz", "aeiouy"
    for date in dates((2024, 7, 1), 10):
        st = [(date.year * 10000 + date.month * 100 + date.day) & M32]
        for _ in range(64):
            ln = (msvc_rand(st) % 6 + 4)
            d = ""
            for _ in range(ln):
                d += cons[msvc_rand(st) % 20] + vow[msvc_rand(st) % 6]
            yield d[:msvc_rand(st) % 2 + ln * 2 - 1] + ".ddns.net"


def wordlist(seed, n, lo=4, hi=8):
    pool = [w for w in WORDS if lo <= len(w) <= hi and not w.endswith("s")]
    return random.Random(seed).sample(pool, n)


def dga_suppobox():
    wl = wordlist(1001, 384)
    t0 = int(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    for k in range(700):
        seed = (t0 + k * 512) >> 9
        x = (seed * 0x41C64E6D + 0x3039) & M32
        i1 = (x >> 4) % len(wl)
        i2 = ((x >> 13) ^ seed) % len(wl)
        yield wl[i1] + wl[i2] + (".net" if seed % 5 else ".com")


def dga_gozi():
    words = wordlist(2002, 2000, 3, 12)
    base = dt.date(2015, 1, 1)
    for date in dates((2024, 1, 1), 60, 10):
        for flag, tld in ((1, ".com"), (0, ".ru")):
            seed = ((flag << 16) + (date - base).days // 10 - 306607824) & M32
            st = [seed]

            def rnd():
                st[0] = (1664525 * st[0] + 1013904223) & M32
                return st[0]

            for _ in range(6):
                rnd()
                ln = rnd() % 12 + 12
                d = ""
                while len(d) < ln:
                    w = words[rnd() % len(words)]
                    l = len(w)
                    if not rnd() % 3:
                        l >>= 1
                    if len(d) + l <= 24:
                        d += w[:l]
                yield d + tld


def dga_nymaim2():
    first = wordlist(3003, 1500, 4, 9)
    second = wordlist(3004, 2500, 4, 10)
    tlds = ["com", "net", "info", "org", "biz", "in", "xyz"]
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
    for date in dates((2024, 3, 5), 10):
        hs = md5(md5("3138C81ED54AD5F8E905555A6623C9C9") + str(date.year) + str(date.timetuple().tm_yday))
        for _ in range(64):
            vals = []
            for _ in range(4):
                vals.append(int(hs[:8], 16))
                hs = md5(hs[7:])
            sep = "-" if vals[2] % 2 else ""
            yield first[vals[0] % len(first)] + sep + second[vals[1] % len(second)] + "." + tlds[vals[3] % len(tlds)]


def dga_pizd():
    wl = wordlist(4004, 500, 5, 9)
    for date in dates((2024, 8, 1), 60):
        st = [date.toordinal() ^ 0x7A35]
        for _ in range(12):
            d = wl[msvc_rand(st) % len(wl)] + wl[msvc_rand(st) % len(wl)]
            if msvc_rand(st) % 5 == 0:
                d += wl[msvc_rand(st) % len(wl)]
            yield d + ".net"


DGAS = [
    ("banjori", dga_banjori, "random"), ("corebot", dga_corebot, "random"),
    ("dircrypt", dga_dircrypt, "random"), ("kraken", dga_kraken, "random"),
    ("locky", dga_locky, "random"), ("murofet", dga_murofet, "random"),
    ("necurs", dga_necurs, "random"), ("nymaim", dga_nymaim, "random"),
    ("pykspa", dga_pykspa, "random"), ("qakbot", dga_qakbot, "random"),
    ("ramnit", dga_ramnit, "random"), ("ranbyus", dga_ranbyus, "random"),
    ("simda", dga_simda, "random"), ("symmi", dga_symmi, "random"),
    ("suppobox", dga_suppobox, "wordlist"), ("gozi", dga_gozi, "wordlist"),
    ("nymaim2", dga_nymaim2, "wordlist"), ("pizd", dga_pizd, "wordlist"),
]


# ----------------------------------------------------------------------------------------------
# benign lookup-zone names
# ----------------------------------------------------------------------------------------------
DOMAINS = """google.com microsoft.com apple.com amazon.com github.com gitlab.com stackoverflow.com wikipedia.org
mozilla.org debian.org ubuntu.com python.org rust-lang.org cloudflare.com akamai.com fastly.com netflix.com
spotify.com dropbox.com slack.com zoom.us salesforce.com oracle.com ibm.com cisco.com intel.com nvidia.com
dell.com hp.com lenovo.com samsung.com sony.com siemens.com bosch.com sap.com adobe.com atlassian.com
paypal.com stripe.com shopify.com ebay.com etsy.com booking.com airbnb.com uber.com lyft.com twitter.com
linkedin.com facebook.com instagram.com whatsapp.com reddit.com yahoo.com bing.com duckduckgo.com
protonmail.com fastmail.com zoho.com mailchimp.com sendgrid.net mailgun.org postmarkapp.com bbc.co.uk
theguardian.com nytimes.com washingtonpost.com reuters.com bloomberg.com ft.com economist.com spiegel.de
zeit.de heise.de lemonde.fr leboncoin.fr orange.fr free.fr telekom.de vodafone.com bt.com o2.co.uk
mit.edu stanford.edu berkeley.edu ox.ac.uk cam.ac.uk ethz.ch uni-heidelberg.de tum.de kth.se
contoso.com fabrikam.com northwindtraders.com adventure-works.com woodgrovebank.com tailspintoys.com
acmecorp.net globex-industries.com initech.com umbrella-labs.org hooli.io piedpiper.net
stadtwerke-muenchen.de sparkasse.de commerzbank.de ing.nl rabobank.nl abnamro.nl nordea.com
hsbc.com barclays.co.uk santander.com bnpparibas.com societegenerale.fr ups.com fedex.com dhl.com
maersk.com ikea.com hm.com zara.com nike.com adidas.com puma.com lego.com nestle.com unilever.com
pfizer.com novartis.com roche.com bayer.com basf.com shell.com bp.com totalenergies.com
nhs.uk gov.uk usa.gov irs.gov europa.eu bund.de admin.ch canada.ca gov.au govt.nz
harvard.edu yale.edu princeton.edu columbia.edu cornell.edu umich.edu utexas.edu ucla.edu
wordpress.org drupal.org joomla.org apache.org nginx.com redhat.com suse.com canonical.com
digitalocean.com linode.com hetzner.de ovh.net scaleway.com vultr.com backblaze.com wasabi.com
""".split()


def rev4(ip):
    return ".".join(str(x) for x in reversed(ip))


def rand_ipv4(rng):
    kind = rng.random()
    if kind < 0.3:
        return [10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)]
    if kind < 0.45:
        return [192, 168, rng.randrange(256), rng.randrange(1, 255)]
    if kind < 0.55:
        return [172, rng.randrange(16, 32), rng.randrange(256), rng.randrange(1, 255)]
    return [rng.choice([8, 23, 31, 45, 62, 77, 81, 91, 104, 142, 151, 172, 185, 193, 203, 209, 213, 217]),
            rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)]


def rand_ipv6_nibbles(rng):
    pre = rng.choice(["20010db8", "2a001450", "26064700", "20014860", "2a032880", "2620fe00", "fe800000",
                      "2a02810", "2003", "2600", "2a01"])
    h = (pre + "".join(rng.choice("0123456789abcdef") for _ in range(32)))[:32]
    r = rng.random()
    if pre.startswith("fe80"):
        h = "fe800000000000000" + h[17:]
        h = h[:32]
    if r < 0.3:  # SLAAC EUI-64 interface id with ff:fe
        h = h[:16] + h[16:22] + "fffe" + h[26:]
    elif r < 0.5:  # small static host id ::1, ::53, ::a
        h = h[:16] + "000000000000" + "%04x" % rng.choice([1, 2, 0x10, 0x53, 0xa, 0x100, 0x25])
    return h


def rev6(h):
    return ".".join(reversed(h))


def gen_benign(rng):
    out = []
    add = lambda q, k: out.append((q, k))
    dom = lambda: rng.choice(DOMAINS)
    for _ in range(600):  # ptr4
        ip = rand_ipv4(rng)
        r = rng.random()
        if r < 0.8:
            add(rev4(ip) + ".in-addr.arpa", "ptr4")
        elif r < 0.93:
            add(rev4(ip[:3]) + ".in-addr.arpa", "ptr4")
        elif r < 0.97:
            add(rev4(ip[:2]) + ".in-addr.arpa", "ptr4")
        else:  # RFC 2317 classless delegation label (hyphen form)
            add("%d.%d-%d.%s.in-addr.arpa" % (ip[3], ip[3] & 0xC0, 26, rev4(ip[:3])), "ptr4")
    for _ in range(400):  # ptr6
        add(rev6(rand_ipv6_nibbles(rng)) + ".ip6.arpa", "ptr6")
    bl4 = ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "dnsbl.sorbs.net",
           "cbl.abuseat.org", "psbl.surriel.com", "dnsbl-1.uceprotect.net", "bl.mailspike.net",
           "ix.dnsbl.manitu.net", "sbl-xbl.spamhaus.org"]
    bl6 = ["zen.spamhaus.org", "dnsbl.sorbs.net", "bl.mailspike.net"]
    for _ in range(500):
        if rng.random() < 0.85:
            ip = rand_ipv4(rng)
            ip[0] = rng.choice([5, 37, 45, 62, 77, 89, 103, 117, 177, 185, 188, 196, 203, 212])
            add(rev4(ip) + "." + rng.choice(bl4), "dnsbl")
        else:
            add(rev6(rand_ipv6_nibbles(rng)) + "." + rng.choice(bl6), "dnsbl")
    rhs = ["dbl.spamhaus.org", "multi.surbl.org", "multi.uribl.com", "rhsbl.sorbs.net", "black.uribl.com",
           "dbl.dq.spamhaus.net"]
    for _ in range(200):
        d = dom()
        if rng.random() < 0.3:
            d = rng.choice(["mail", "news", "click", "links", "email", "t", "go"]) + "." + d
        add(d + "." + rng.choice(rhs), "rhsbl")
    for _ in range(150):
        r = rng.random()
        if r < 0.6:
            add(hashlib.md5(rng.randbytes(16)).hexdigest() + ".malware.hash.cymru.com", "hashbl")
        elif r < 0.8:
            h = base64.b32encode(hashlib.sha256(rng.randbytes(16)).digest()).decode().rstrip("=").lower()
            add(h + "._file.hbl.dq.spamhaus.net", "hashbl")
        else:
            h = base64.b32encode(hashlib.sha1(rng.randbytes(16)).digest()).decode().rstrip("=").lower()
            add(h + "._email.hbl.dq.spamhaus.net", "hashbl")
    realms = ["CORP.CONTOSO.COM", "AD.FABRIKAM.COM", "EXAMPLE.ORG", "CS.UNI-HEIDELBERG.DE", "ATHENA.MIT.EDU"]
    sites = ["Default-First-Site-Name", "HQ", "Berlin", "NYC-DC", "London"]
    srvs = ["_sip._tls", "_sip._udp", "_sipfederationtls._tcp", "_xmpp-client._tcp", "_xmpp-server._tcp",
            "_autodiscover._tcp", "_caldavs._tcp", "_carddavs._tcp", "_imaps._tcp", "_submission._tcp",
            "_pop3s._tcp", "_ldap._tcp", "_kerberos._tcp", "_kpasswd._udp", "_minecraft._tcp", "_matrix._tcp",
            "_stun._udp", "_turn._udp", "_http._tcp", "_vlmcs._tcp", "_gc._tcp", "_jabber._tcp"]
    for _ in range(400):
        d = dom()
        r = rng.random()
        if r < 0.25:
            add(rng.choice(["_ldap._tcp.dc._msdcs.", "_kerberos._tcp.dc._msdcs.", "_ldap._tcp.pdc._msdcs.",
                            "_ldap._tcp.gc._msdcs."]) + rng.choice(["corp.", "ad.", "", "int."]) + d, "srv")
        elif r < 0.35:
            add("_ldap._tcp.%s._sites.dc._msdcs.%s" % (rng.choice(sites), d), "srv")
        elif r < 0.45:
            add(rng.choice(["_kerberos._udp.", "_kerberos._tcp.", "_kerberos-master._udp."]) + rng.choice(realms),
                "srv")
        else:
            add(rng.choice(srvs) + "." + d, "srv")
    for _ in range(180):
        r = rng.random()
        if r < 0.4:
            add(rng.choice(["_services._dns-sd._udp.", "b._dns-sd._udp.", "lb._dns-sd._udp.",
                            "db._dns-sd._udp.", "r._dns-sd._udp."]) + dom(), "dnssd")
        elif r < 0.75:
            ip = rand_ipv4(rng)
            add(rng.choice(["b", "lb", "db", "r", "dr"]) + "._dns-sd._udp." + rev4([ip[0], ip[1], ip[2], 0]) +
                ".in-addr.arpa", "dnssd")
        else:
            add(rng.choice(["_ipp._tcp.", "_printer._tcp.", "_airplay._tcp.", "_googlecast._tcp.",
                            "_raop._tcp.", "_smb._tcp."]) + rng.choice(["local", dom()]), "dnssd")
    sels = ["selector1", "selector2", "google", "default", "k1", "k2", "s1", "s2", "mail", "dkim", "mandrill",
            "mxvault", "smtpapi", "pm", "zendesk1", "sig1", "everlytickey1", "20230601", "20210112", "dkim2048",
            "scph0618", "mte1", "krs", "m1", "cm", "fm1", "protonmail", "protonmail2"]
    for _ in range(300):
        d = dom()
        r = rng.random()
        if r < 0.55:
            add(rng.choice(sels) + "._domainkey." + d, "dkim")
        elif r < 0.8:  # Amazon SES: 32-char base32-ish lower-case token
            tok = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(32))
            add(tok + "._domainkey." + d, "dkim")
        else:
            t = d.split(".")[0]
            add("%s-%s._domainkey.%s.onmicrosoft.com" % (rng.choice(["selector1", "selector2"]),
                                                         d.replace(".", "-"), t), "dkim")
    for _ in range(120):
        add("_dmarc." + (rng.choice(["", "", "mail.", "news.", "em."]) + dom()), "dmarc")
    for _ in range(80):
        add("_acme-challenge." + rng.choice(["", "", "www.", "api.", "mail.", "vpn.", "git."]) + dom(), "acme")
    for _ in range(80):
        add(rng.choice(["_mta-sts.", "_smtp._tls.", "mta-sts."]) + dom(), "mta-sts")
    for _ in range(70):
        cc = rng.choice(["1", "44", "49", "33", "31", "46", "41", "43", "61"])
        num = cc + "".join(str(rng.randrange(10)) for _ in range(rng.randrange(8, 11)))
        add(".".join(reversed(num)) + ".e164.arpa", "enum")
    return out


# ----------------------------------------------------------------------------------------------
def main():
    os.makedirs(OUT, exist_ok=True)
    report = []
    bad = 0

    rows = []
    for i, (tool, zone, fn) in enumerate(TOOLS, 1):
        rng = random.Random(0xE5F1 + i * 7919)
        qs = fn(rng, zone)
        for q, t in qs:
            if not valid(q) or not q.endswith("." + zone):
                bad += 1
                print("INVALID", tool, q, file=sys.stderr)
                continue
            rows.append((q, tool, "10.9.0.%d" % i, t))
        report.append(("tunnel", tool, [r[0] for r in rows if r[1] == tool]))
    with open(os.path.join(OUT, "unseen_tunnels.tsv"), "w") as f:
        f.write("qname\ttool\tclient\tqtype\n")
        for r in rows:
            f.write("%s\t%s\t%s\t%d\n" % r)

    rows = []
    for i, (fam, fn, kind) in enumerate(DGAS, 1):
        seen = []
        s = set()
        for d in fn():
            if d in s:
                continue
            if not valid(d):
                bad += 1
                print("INVALID", fam, d, file=sys.stderr)
                continue
            s.add(d)
            seen.append(d)
            if len(seen) >= 700:
                break
        for d in seen:
            rows.append((d, fam, "10.8.0.%d" % i, kind))
        report.append(("dga", fam, seen))
    with open(os.path.join(OUT, "unseen_dga.tsv"), "w") as f:
        # rcode 3: a DGA's candidates do not resolve (the few its operators register are the
        # point of the walk); the front feeds the answer to its DGA-bot analytics
        f.write("qname\tfamily\tclient\tkind\trcode\n")
        for r in rows:
            f.write("%s\t%s\t%s\t%s\t3\n" % r)

    rng = random.Random(0xB3E1)
    rows = []
    seen = set()
    for q, k in gen_benign(rng):
        if q in seen:
            continue
        if not valid(q):
            bad += 1
            print("INVALID", k, q, file=sys.stderr)
            continue
        seen.add(q)
        rows.append((q, k))
    with open(os.path.join(OUT, "benign_lookup.tsv"), "w") as f:
        f.write("qname\tkind\n")
        for r in rows:
            f.write("%s\t%s\n" % r)
    kinds = {}
    for q, k in rows:
        kinds.setdefault(k, []).append(q)
    for k, qs in kinds.items():
        report.append(("benign", k, qs))

    for grp, nm, qs in report:
        ex = [qs[0], qs[len(qs) // 2], qs[-1]] if qs else []
        print("%-7s %-24s %5d  %s" % (grp, nm, len(qs), "  ".join(ex)))
    print("invalid names dropped:", bad)
    print("word list:", WORDS_PATH)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
