#!/usr/bin/env python3
"""Leave-one-tool-out / leave-one-family-out through the DEPLOYED decision (issue 23).

`model/train.py --cv` measures each held-out tunnel tool / DGA family per name, on names whose lab
zone was replaced.  This script replays the same held-out groups through what a resolver actually
does (`exfilguard eval --stream`: lookup-name rules, the model, the domain-level decision, the DGA-bot
NXDOMAIN mark, the behaviour budget) with the CV model that never saw the group:

  1. `exfilguard dataset split` writes the benign test slices (alexa, umbrella) that the CI guard
     (crates/exfilguard/tests/accuracy.rs) uses as benign controls; model/eval/benign_lookup.tsv is
     the third control, as in the guard.
  2. For every group, a stream TSV with ALL of that group's rows from ../shared/data, in file order,
     with their ORIGINAL names (the real lab zone kept), one client per group as model/unseen.py
     does (tunnels 10.9.1.N, qtype 1; DGA families 10.8.1.N, rcode 3 = NXDOMAIN).
  3. `exfilguard --model CV/<group>.onnx eval --stream --benign <controls> --malicious <stream>
     --json ...` for the trained tools/families (CV models from `train.py --cv-only --cv-export CV`);
     the shipped hold-outs (tuns, dnsexfiltrator; matsnu, newgoz, ramdo) with the shipped model
     (embedded in the binary).  Benign files are replayed first in each run, so the malicious rows
     cannot influence the benign figures.
  4. Writes one markdown table per kind (tools, families) plus the commands and runtime.

Standard library only.  Usage (see model/eval/loo_stream.md for a run):
    /opt/train/bin/python model/train.py --cv-only --cv-export /tmp/eg-loo-cv
    python3 model/loo_stream.py --bin /tmp/eg-loo --cv-dir /tmp/eg-loo-cv --work /tmp/eg-loo-work \
        --out model/eval/loo_stream.md
"""
import argparse
import csv
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# trained by the shipped model -> held out one at a time by train.py --cv
CV_TOOLS = ["dns2tcp", "dnscapy", "iodine"]
CV_FAMILIES = ["conficker", "cryptolocker", "gameover-zeus", "pushdo", "rovnix", "tinba"]
# never trained by the shipped model (dataset build defaults) -> evaluated with the shipped model
SHIPPED_TOOLS = ["dnsexfiltrator", "tuns"]
SHIPPED_FAMILIES = ["matsnu", "newgoz", "ramdo"]
# word-list DGAs (English words / phrases): the goal for them is 80 %, not 90 %
WORDLIST = {"matsnu", "rovnix"}

GOAL_TOOL = 0.995      # share of a tool's queries refused after each client's first 5 per domain
GOAL_DGA = 0.90        # share of a family's queries refused
GOAL_WORDLIST = 0.80
GOAL_ALEXA = 0.0001    # benign top sites
GOAL_UMBRELLA = 0.001  # benign host names


def read_tsv(path):
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(r)
        return header, [row for row in r if row]


def write_streams(data, work, groups):
    """One stream TSV per group: all its rows, original names, file order, one client."""
    os.makedirs(os.path.join(work, "streams"), exist_ok=True)
    paths, rows_in_file = {}, {}
    h, rows = read_tsv(os.path.join(data, "tunnel_queries_train.tsv"))
    qi, ti = h.index("qname"), h.index("tool")
    tools = [g for g in CV_TOOLS + SHIPPED_TOOLS if g in groups]
    for i, tool in enumerate(tools, 1):
        sel = [r[qi] for r in rows if r[ti] == tool]
        p = os.path.join(work, "streams", f"{tool}.tsv")
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write("qname\ttool\tclient\tqtype\n")
            for q in sel:
                # the data has no query type: A (1), the harshest for the prefilter
                f.write(f"{q}\t{tool}\t10.9.1.{i}\t1\n")
        paths[tool], rows_in_file[tool] = p, len(sel)
    h, rows = read_tsv(os.path.join(data, "dga_generated_10_families.tsv"))
    di, fi = h.index("domain"), h.index("family")
    fams = [g for g in CV_FAMILIES + SHIPPED_FAMILIES if g in groups]
    for i, fam in enumerate(fams, 1):
        sel = [r[di] for r in rows if r[fi] == fam]
        for rcode, suffix in ((3, ""), (0, ".noerror")):
            # rcode 3: a DGA's candidates do not resolve (as model/eval/unseen_dga.tsv); the
            # NOERROR copy takes the NXDOMAIN walk away, leaving the model and the domain rules
            p = os.path.join(work, "streams", f"{fam}{suffix}.tsv")
            with open(p, "w", encoding="utf-8", newline="") as f:
                f.write("qname\tfamily\tclient\trcode\n")
                for q in sel:
                    f.write(f"{q}\t{fam}\t10.8.1.{i}\t{rcode}\n")
            paths[fam + suffix] = p
        rows_in_file[fam] = len(sel)
    return paths, rows_in_file


def run(cmd, log):
    log.append(" ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return time.time() - t0


def pct(v, digits=2):
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="/tmp/eg-loo", help="exfilguard binary")
    ap.add_argument("--cv-dir", default="/tmp/eg-loo-cv",
                    help="CV models and cv.json from train.py --cv-only --cv-export DIR")
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--work", default="/tmp/eg-loo-work", help="stream files, JSON reports, misses")
    ap.add_argument("--out", help="write the markdown results here (e.g. model/eval/loo_stream.md)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--free", type=int, default=5)
    ap.add_argument("--groups", help="only these groups (comma-separated)")
    ap.add_argument("--slow-ms", type=int, default=60000,
                    help="DGA families are also replayed (NXDOMAIN) at one query per this many "
                         "simulated ms: a slow bot (0: skip)")
    ap.add_argument("--train-seconds", type=float,
                    help="wall-clock seconds of the train.py run, for the results file")
    ap.add_argument("--train-command", help="the train.py command line, for the results file")
    args = ap.parse_args()

    every = CV_TOOLS + SHIPPED_TOOLS + CV_FAMILIES + SHIPPED_FAMILIES
    groups = every if not args.groups else [g for g in every if g in args.groups.split(",")]
    t_start = time.time()
    log = []
    cv_path = os.path.join(args.cv_dir, "cv.json")
    cv = json.load(open(cv_path)) if os.path.exists(cv_path) else {"cv": {}}
    shipped = json.load(open(os.path.join(HERE, "metrics.json")))

    split = os.path.join(args.work, "split")
    run([args.bin, "dataset", "split", "--data", args.data, "--out", split], log)
    controls = [os.path.join(split, "test_benign_alexa.txt"),
                os.path.join(split, "test_benign_umbrella.txt"),
                os.path.join(HERE, "eval", "benign_lookup.tsv")]
    paths, rows_in_file = write_streams(args.data, args.work, groups)
    os.makedirs(os.path.join(args.work, "reports"), exist_ok=True)

    results = {}
    for g in groups:
        is_cv = g in CV_TOOLS + CV_FAMILIES
        onnx = os.path.join(args.cv_dir, f"{g}.onnx")
        if is_cv and not os.path.exists(onnx):
            print(f"{g}: no CV model {onnx}; skipped", file=sys.stderr)
            continue
        rep = os.path.join(args.work, "reports", f"{g}.json")
        misses = os.path.join(args.work, "reports", f"{g}.misses.tsv")
        cmd = [args.bin] + (["--model", onnx] if is_cv else []) + ["eval", "--stream"]
        for c in controls:
            cmd += ["--benign", c]
        cmd += ["--malicious", paths[g], "--clients", str(args.clients), "--free", str(args.free),
                "--json", rep, "--misses", misses]
        secs = run(cmd, log)
        r = json.load(open(rep))
        lab = r["labels"]
        s = lab[g]
        if is_cv:
            c = cv["cv"][g]
            per_name = c["tpr"]
            per_name_rows = c["rows"]
            name_fpr = (c["benign_test_fpr"].get("alexa"), c["benign_test_fpr"].get("umbrella"))
        else:
            t = shipped["test"][g]
            per_name = t["tpr"]
            per_name_rows = t["rows"]
            name_fpr = (shipped["test"]["alexa"]["fpr"], shipped["test"]["umbrella"]["fpr"])
        answered = []
        with open(misses, encoding="utf-8") as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) >= 4 and p[1] == g and p[3] == "answered":
                    answered.append(p[0])
        results[g] = {
            "model": r["model"],
            "rows_in_file": rows_in_file[g],
            "queries": s["queries"],
            "invalid": s["invalid"],
            "per_name_rows": per_name_rows,
            "per_name_tpr": per_name,
            "rate": s["rate"],
            "after_free": s["after_free"],
            "rate_after_free": s["rate_after_free"] if s["after_free"] else None,
            "domains": f'{s["domains_refused"]}/{s["domains"]}',
            "by_source": s["by_source"],
            "alexa": lab["test_benign_alexa"],
            "umbrella": lab["test_benign_umbrella"],
            "lookup": lab["benign_lookup"],
            "name_fpr": name_fpr,
            "answered": len(answered),
            "answered_examples": answered[:3],
            "seconds": round(secs, 2),
        }
        if g in CV_FAMILIES + SHIPPED_FAMILIES:
            # the same family with every answer NOERROR: no DGA-bot mark, what the model and
            # the domain-level decision do alone
            rep0 = os.path.join(args.work, "reports", f"{g}.noerror.json")
            i = cmd.index("--malicious")
            cmd0 = cmd[:i] + ["--malicious", paths[g + ".noerror"], "--clients", str(args.clients),
                              "--free", str(args.free), "--json", rep0]
            secs += run(cmd0, log)
            s0 = json.load(open(rep0))["labels"][g]
            results[g]["noerror"] = {"rate": s0["rate"], "by_source": s0["by_source"],
                                     "queries": s0["queries"]}
            if args.slow_ms:
                # NXDOMAIN kept, but a slow bot: one query per --slow-ms (the DGA-bot mark
                # needs behaviour.dga_min_domains distinct NXDOMAIN domains per dga_window_secs)
                rep1 = os.path.join(args.work, "reports", f"{g}.slow.json")
                cmd1 = cmd[:i] + ["--malicious", paths[g], "--clients", str(args.clients),
                                  "--free", str(args.free), "--interval-ms", str(args.slow_ms),
                                  "--json", rep1]
                secs += run(cmd1, log)
                s1 = json.load(open(rep1))["labels"][g]
                results[g]["slow"] = {"rate": s1["rate"], "by_source": s1["by_source"],
                                      "queries": s1["queries"]}
            results[g]["seconds"] = round(secs, 2)
        x = results[g]
        print(f"{g:15s} model {x['model']:30s} queries {x['queries']:6d} refused {pct(x['rate'])} "
              f"after-{args.free} {pct(x['rate_after_free'])} alexa {x['alexa']['refused']}/"
              f"{x['alexa']['queries']} umbrella {x['umbrella']['refused']}/"
              f"{x['umbrella']['queries']} lookup {x['lookup']['refused']}", file=sys.stderr)
    stream_secs = time.time() - t_start
    with open(os.path.join(args.work, "loo_stream.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    if args.out:
        write_md(args, results, cv, log, stream_secs)


def src(by):
    return ", ".join(f"{k} {v}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) or "–"


def benign_cells(x):
    a, u, lk = x["alexa"], x["umbrella"], x["lookup"]
    return (f"{pct(a['rate'], 4)} ({a['refused']})", f"{pct(u['rate'], 3)} ({u['refused']})",
            f"{lk['refused']}/{lk['queries']}")


def write_md(args, results, cv, log, stream_secs):
    free = args.free
    L = []
    w = L.append
    w("# Leave-one-tool-out / leave-one-family-out through the deployed decision (issue 23)")
    w("")
    w("Generated by `model/loo_stream.py` (tables, commands, goal check); the *Reading* section at the end")
    w("is written by hand for this run. Each trained tunnel tool and DGA family is held out in turn")
    w("(`model/train.py --cv-only --cv-export`), the model retrained without it and its operating point")
    w("re-chosen on validation; that CV model is then loaded with `exfilguard --model` and the held-out")
    w("group's **original** query names are replayed through `exfilguard eval --stream` (lookup-name rules,")
    w("model, domain-level decision after MEDIUM names, DGA-bot NXDOMAIN mark, behaviour budget), with the")
    w("benign controls of the CI guard in the same run, replayed first. The shipped model's own hold-outs")
    w("(tuns, dnsexfiltrator; matsnu, newgoz, ramdo) are replayed with the shipped model `mlp-20261122`.")
    w("")
    w(f"* **refused** = share of all the group's queries refused; **after first {free}** = share refused among")
    w(f"  queries after each client's first {free} per registered domain (the issue's count for tools). A DGA")
    w("  family's names are all distinct domains, so the after-first count is (almost) empty: the family goal")
    w("  is on all queries, as in `accuracy.rs`.")
    w("* **per-name TPR** = `train.py` figure for the same model at its operating point (CV models: all rows of")
    w("  the group, lab zone replaced by a benign domain; shipped hold-outs: `model/metrics.json` test).")
    w("* **benign** = refused share of the CI guard's controls replayed through the same model: alexa test")
    w("  split (top sites, 30 054), umbrella test split (host names, 13 981), `model/eval/benign_lookup.tsv`")
    w("  (lookup names, 2 983); in brackets the number refused. **name FPR** = the model's per-name FPR on the")
    w("  alexa / umbrella test split (`train.py`).")
    w("")
    w("* **DGA, if NOERROR** = the same family replayed again with every answer NOERROR (rcode 0): no")
    w("  NXDOMAIN walk, so no DGA-bot mark; what the held-out model and the domain rules do alone.")
    if args.slow_ms:
        w(f"* **DGA, slow bot** = the same family, NXDOMAIN kept, one query every {args.slow_ms / 1000:g} s of")
        w(f"  simulated time instead of every {100 / 1000:g} s (`--interval-ms {args.slow_ms}`).")
    w("")
    for kind, names in (("Tunnel tools", CV_TOOLS + SHIPPED_TOOLS), ("DGA families", CV_FAMILIES + SHIPPED_FAMILIES)):
        dga = kind.startswith("DGA")
        extra = " refused if NOERROR (by) | refused, slow bot (by) |" if dga else ""
        w(f"## {kind}")
        w("")
        w(f"| held out | model | rows in file / replayed (invalid) | per-name TPR (rows) | refused | after first {free} "
          f"| domains refused | refused by |{extra} benign alexa | benign umbrella | lookup names refused "
          "| name FPR alexa / umbrella | goal |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if dga else ""))
        for g in names:
            if g not in results:
                w(f"| {g} | not run |" + " |" * (11 + 2 * dga))
                continue
            x = results[g]
            ok = goal_ok(g, x)
            cell = ""
            if dga:
                n0 = x["noerror"]
                cell = f" {pct(n0['rate'])} ({src(n0['by_source'])}) |"
                n1 = x.get("slow")
                cell += f" {pct(n1['rate'])} ({src(n1['by_source'])}) |" if n1 else " – |"
            w(f"| {g}{' (word list)' if g in WORDLIST else ''} | {x['model']} | {x['rows_in_file']} / {x['queries']} "
              f"({x['invalid']}) | {pct(x['per_name_tpr'], 1)} ({x['per_name_rows']}) | {pct(x['rate'])} | "
              f"{pct(x['rate_after_free'])} | {x['domains']} | {src(x['by_source'])} |{cell} "
              + " | ".join(benign_cells(x))
              + f" | {pct(x['name_fpr'][0], 4)} / {pct(x['name_fpr'][1], 3)} | {ok} |")
        w("")
    w("## Goals of issue 23")
    w("")
    w(f"Tools left out: ≥ 99.5 % refused after the first {free}; DGA families left out ≥ 90 % (word list ≥ 80 %)")
    w("of queries refused; benign top sites ≤ 0.01 %, benign host names ≤ 0.1 %, lookup names 0.")
    w("")
    misses = []
    for g, x in results.items():
        goal, val, what = goal_of(g, x)
        if val is None or val < goal:
            misses.append(f"* **{g}**: {what} {pct(val)} < {pct(goal, 1)}"
                          + (f" (short by {100 * (goal - val):.2f} points)" if val is not None else ""))
        a, u, lk = x["alexa"]["rate"], x["umbrella"]["rate"], x["lookup"]["refused"]
        if a > GOAL_ALEXA:
            misses.append(f"* benign alexa with the {g} model: {pct(a, 4)} > 0.01 %")
        if u > GOAL_UMBRELLA:
            misses.append(f"* benign umbrella with the {g} model: {pct(u, 3)} > 0.1 %")
        if lk:
            misses.append(f"* {lk} lookup names refused with the {g} model")
    if misses:
        w("Missed:")
        w("")
        L.extend(dict.fromkeys(misses))
    else:
        w("Every goal met.")
    w("")
    short = []
    for g, x in results.items():
        if "noerror" in x:
            goal = GOAL_WORDLIST if g in WORDLIST else GOAL_DGA
            v = x["noerror"]["rate"]
            if v < goal:
                short.append(f"{g} {pct(v, 1)} (short by {100 * (goal - v):.1f} points)")
    if short:
        same = all("slow" in x and x["slow"]["rate"] == x["noerror"]["rate"]
                   for x in results.values() if "noerror" in x)
        w("Without the DGA-bot mark (the NOERROR replay" + ("; the slow-bot replay gives the same figures"
                                                           if same else "") + ") the family goal is missed:")
        w("" + "; ".join(short) + ".")
        w("")
    w("## How this was run")
    w("")
    w(f"* binary `{args.bin}` (sha256 `{sha256(args.bin)[:16]}…`, file time {mtime(args.bin)}); repository HEAD "
      f"`{git_head()}`; CV models in `{args.cv_dir}` (`cv.json` there has their thresholds, temperatures, sha256).")
    train_s = args.train_seconds
    epochs = cv.get("epochs")
    cv_secs = sum(c.get("seconds", 0) for c in cv.get("cv", {}).values())
    w(f"* training: {len(cv.get('cv', {}))} CV models, `--epochs {epochs}` (early stopping, patience 5), "
      f"{cv_secs:.0f} s of fitting + export"
      + (f", {train_s / 60:.1f} min wall clock for the whole `train.py` run" if train_s else "")
      + "; 2 shared cores, `nice`.")
    w(f"* replay: {len(results)} groups, {len(log) - 1} `eval --stream` runs, {stream_secs:.0f} s in all (including `dataset split`).")
    w("")
    with open(os.path.join(args.work, "commands.txt"), "w") as f:
        f.write("\n".join(log) + "\n")
    data = os.path.relpath(args.data, REPO)
    wk, b = args.work, args.bin
    ctl = (f"--benign {wk}/split/test_benign_alexa.txt --benign {wk}/split/test_benign_umbrella.txt "
           "--benign model/eval/benign_lookup.tsv")
    w("```")
    w("# from the repository root; training is offline, never in CI")
    if args.train_command:
        w(args.train_command)
    w("python3 " + shlex.join(["model/loo_stream.py"] + sys.argv[1:]))
    w(f"# which runs ({wk}/commands.txt has every command):")
    w(f"{b} dataset split --data {data} --out {wk}/split")
    w(f"# per held-out group G: --model {args.cv_dir}/G.onnx for the trained tools/families, the")
    w("# embedded (shipped) model for tuns, dnsexfiltrator, matsnu, newgoz, ramdo")
    w(f"{b} [--model {args.cv_dir}/G.onnx] eval --stream {ctl} --malicious {wk}/streams/G.tsv "
      f"--clients {args.clients} --free {free} --json {wk}/reports/G.json --misses {wk}/reports/G.misses.tsv")
    w(f"# DGA families also: --malicious {wk}/streams/G.noerror.tsv (rcode 0), and G.tsv with "
      f"--interval-ms {args.slow_ms}")
    w("```")
    w("")
    text = "\n".join(L)
    if os.path.exists(args.out):  # keep the hand-written reading of the previous run
        old = open(args.out, encoding="utf-8").read()
        i = old.find("\n## Reading")
        if i >= 0:
            text += old[i:]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}", file=sys.stderr)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mtime(path):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(path)))


def git_head():
    r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def goal_of(g, x):
    if g in CV_TOOLS + SHIPPED_TOOLS:
        return GOAL_TOOL, x["rate_after_free"], "refused after the first queries"
    return (GOAL_WORDLIST if g in WORDLIST else GOAL_DGA), x["rate"], "refused"


def goal_ok(g, x):
    goal, val, _ = goal_of(g, x)
    return "✔" if val is not None and val >= goal else f"✘ (≥ {pct(goal, 1)})"


if __name__ == "__main__":
    main()
