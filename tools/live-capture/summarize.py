#!/usr/bin/env python3
"""Print a markdown table of the captures in captures/ (reads .log and .log.gz)."""
import glob, gzip, os, re, sys

d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "captures")
rows = []
for p in sorted(glob.glob(os.path.join(d, "*.log")) + glob.glob(os.path.join(d, "*.log.gz"))):
    op = gzip.open if p.endswith(".gz") else open
    h = {}
    ts = []; names = set(); qlen = 0
    with op(p, "rt") as f:
        for line in f:
            if line.startswith("#"):
                if line.startswith("# cmd: client ns: iodine") and " -L0 " in line:
                    h["variant"] = " (-L0)"
                m = re.match(r"# ([^:]+): (.*)", line.rstrip("\n"))
                if m:
                    h.setdefault(m.group(1), m.group(2))
                m = re.match(r"# received (\S+) bytes", line)
                if m:
                    h["received"] = m.group(1)
                continue
            t, c, n = line.split()
            ts.append(float(t)); names.add(n); qlen += len(n)
    m = re.match(r"(\S+)\s+end: (\S+)", h.get("payload start", ""))
    s0, s1 = (float(m.group(1)), float(m.group(2))) if m else (0, 0)
    during = sum(1 for t in ts if s0 <= t <= s1)
    dur = (s1 - s0) or 1
    rate = h.get("rate B/s", "")
    if h.get("tool") == "beacon":
        rate = "period " + h.get("period", "?")
    rows.append((h.get("tool", "") + h.get("variant", ""), rate, h.get("seconds"), len(ts), "%.2f" % (during / dur),
                 h.get("payload bytes written"), h.get("received"), len(names),
                 "%.0f" % (qlen / max(1, len(ts))), os.path.basename(p)))
print("| tool | rate B/s | seconds | queries | q/s during stream | bytes written | bytes received | distinct names | mean name chars | file |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
