#!/usr/bin/env python3
"""Train the exfilguard DNN on the features that the Rust code exported, export it to ONNX.

Reproduce (offline, not in CI; see model/README.md):
    cargo run --release -p exfilguard -- dataset build      # writes model/data/features.csv
    python3 -m venv /opt/train && /opt/train/bin/pip install tensorflow-cpu tf2onnx onnx numpy
    /opt/train/bin/python model/train.py                    # writes the .onnx and model/metrics.json
    /opt/train/bin/python model/train.py --cv               # also leave-one-tool/family-out CV
    /opt/train/bin/python model/train.py --cv-only --cv-export /tmp/cv   # CV models as ONNX only
        (each CV model to DIR/<group>.onnx with its own thresholds, results to DIR/cv.json; with
        --cv-only the shipped model, scores.npz and metrics.json are left alone; model/loo_stream.py
        replays them through the deployed decision)

The graph contains the standardisation, the MLP and the temperature-scaled softmax, so the
Rust side feeds raw features and reads calibrated probabilities. Its metadata_props carry the
feature names (checked by the Rust loader), the class order and the decision threshold.
"""
import argparse
import csv
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

CLASSES = ["benign", "tunnel", "dga"]
HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261122

# Operating-point targets (DEVELOPERS issue 2): FPR on validation benign sources. The threshold
# is the lowest calibrated P(malicious) that keeps every source within its budget on validation.
FPR_BUDGET = {"alexa": 0.0001, "umbrella": 0.001, "opendns-top10k": 0.001, "opendns-random10k": 0.002}


def load(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        feats = header[4:]
        split, label, group, name, x = [], [], [], [], []
        for row in r:
            split.append(row[0])
            label.append(int(row[1]))
            group.append(row[2])
            name.append(row[3])
            x.append([float(v) for v in row[4:]])
    return (feats, np.array(split), np.array(label, dtype=np.int64), np.array(group),
            np.array(name, dtype=object), np.array(x, dtype=np.float32))


def build_model(n_features, mean, std):
    inp = tf.keras.Input(shape=(n_features,), name="features")
    h = (inp - mean) / std
    for width in (64, 32, 16):
        h = tf.keras.layers.Dense(width, activation="relu",
                                  kernel_regularizer=tf.keras.regularizers.l2(1e-5))(h)
    logits = tf.keras.layers.Dense(len(CLASSES), name="logits")(h)
    return tf.keras.Model(inp, logits)


def train(x, y, xv, yv, epochs):
    tf.keras.utils.set_random_seed(SEED)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-6] = 1.0
    m = build_model(x.shape[1], mean.astype(np.float32), std.astype(np.float32))
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    weights = {c: float(len(y) / (len(CLASSES) * max(counts[c], 1))) for c in range(len(CLASSES))}
    m.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stop = tf.keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    m.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=512, class_weight=weights,
          callbacks=[stop], verbose=2)
    return m


def fit_temperature(logits, y):
    """Temperature scaling (Guo et al. 2017) on validation logits: one scalar, grid search."""
    best = (1e9, 1.0)
    for t in np.exp(np.linspace(np.log(0.2), np.log(10), 200)):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -logp[np.arange(len(y)), y].mean()
        best = min(best, (nll, float(t)))
    return best[1]


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_thresholds(p, group, label):
    """One operating point, chosen on validation: a threshold per malicious class on that class's
    calibrated probability. Each is the lowest value that keeps every benign validation source
    within half its FPR budget (the two classes share the budget). Tunnel-like benign names
    (hash-named CDN hosts) and DGA-like benign names (odd brand names) are different tails, so
    one threshold on P(not benign) would let the worse tail set the bar for both classes."""
    out = {}
    for c in range(1, len(CLASSES)):
        t = 0.5
        for src, budget in FPR_BUDGET.items():
            s = np.sort(p[(label == 0) & (group == src), c])[::-1]
            allowed = int(np.floor(budget / 2 * len(s)))
            if allowed < len(s):
                t = max(t, float(np.nextafter(np.float32(s[allowed]), np.float32(1.0))))
        out[CLASSES[c]] = min(t, 0.999999)
    return out


def decide(p, thr):
    """1 where any malicious class reaches its threshold."""
    flagged = np.zeros(len(p), dtype=bool)
    for c in range(1, len(CLASSES)):
        flagged |= p[:, c] >= thr[CLASSES[c]]
    return flagged


def metrics(p, label, group, thr):
    out = {}
    flags = decide(p, thr)
    for g in sorted(set(group)):
        sel = group == g
        lab = int(label[sel][0])
        flagged = float(flags[sel].mean())
        key = "fpr" if lab == 0 else "tpr"
        out[g] = {"rows": int(sel.sum()), key: flagged, "class": CLASSES[lab]}
    return out


def export_onnx(model, temperature, thr, feats, path, version):
    import onnx
    import tf2onnx

    spec = (tf.TensorSpec((None, len(feats)), tf.float32, name="features"),)

    @tf.function(input_signature=spec)
    def probs(x):
        return tf.identity(tf.nn.softmax(model(x) / temperature), name="probs")

    proto, _ = tf2onnx.convert.from_function(probs, input_signature=spec, opset=13)
    meta = {
        "exfilguard.features": ",".join(feats),
        "exfilguard.classes": ",".join(CLASSES),
        "exfilguard.thresholds": ",".join(f"{c}:{thr[c]!r}" for c in CLASSES[1:]),
        "exfilguard.version": version,
        "exfilguard.temperature": repr(float(temperature)),
    }
    for k, v in meta.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    proto.producer_name = "exfilguard model/train.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def export_saved_model(model, temperature, n_features, path, version):
    """The same graph as a TensorFlow SavedModel for TensorFlow Serving: signature
    serving_default, input "features" [n, 45] float32, output "probs" [n, 3]. TF Serving wants
    MODEL_BASE/<version number>/saved_model.pb, so `path` should end in a number."""
    spec = tf.TensorSpec((None, n_features), tf.float32, name="features")

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[spec])
        def serve(self, features):
            return {"probs": tf.nn.softmax(self.model(features) / temperature)}

    m = Serving()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve})
    with open(os.path.join(path, "exfilguard-version.txt"), "w") as f:
        f.write(version + "\n")


def fit_and_score(feats, split, label, group, x, exclude, epochs):
    """Train without the `exclude` groups; return calibrated scores for every row + threshold."""
    keep = ~np.isin(group, list(exclude))
    tr = (split == "train") & keep
    va = (split == "val") & keep
    m = train(x[tr], label[tr], x[va], label[va], epochs)
    logits = m.predict(x, batch_size=8192, verbose=0)
    temp = fit_temperature(logits[va], label[va])
    p = softmax(logits / temp)
    thr = choose_thresholds(p[va], group[va], label[va])
    return m, temp, thr, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "data", "features.csv"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "crates", "exfilguard-detect", "assets", "exfilguard.onnx"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--cv", action="store_true", help="leave-one-tool/family-out cross-validation")
    ap.add_argument("--version", default=time.strftime("mlp-%Y%m%d"))
    ap.add_argument("--saved-model", metavar="DIR",
                    help="also write a TensorFlow SavedModel for TF Serving (e.g. serving/exfilguard/1)")
    ap.add_argument("--cv-export", metavar="DIR",
                    help="with --cv: also export each CV model to DIR/<group>.onnx (its own "
                         "re-chosen thresholds in the metadata, as the shipped model) and write "
                         "DIR/cv.json; implies --cv")
    ap.add_argument("--cv-only", action="store_true",
                    help="run only the cross-validation: do not train or export the shipped "
                         "model, do not write scores.npz or metrics.json (needs --cv-export)")
    ap.add_argument("--cv-groups", metavar="G,G",
                    help="hold out only these groups in the cross-validation (default: every "
                         "trained tool and family)")
    args = ap.parse_args()
    if args.cv_export:
        args.cv = True
    if args.cv_only and not args.cv_export:
        ap.error("--cv-only needs --cv-export DIR (the CV results go to DIR/cv.json)")

    feats, split, label, group, name, x = load(args.data)
    print(f"{len(x)} rows, {len(feats)} features", file=sys.stderr)
    if args.cv_only:
        cross_validate(args, feats, split, label, group, x)
        return
    m, temp, thr, p = fit_and_score(feats, split, label, group, x, set(), args.epochs)
    te = split == "test"
    va = split == "val"
    report = {
        "version": args.version,
        "temperature": temp,
        "thresholds": thr,
        "test": metrics(p[te], label[te], group[te], thr),
        "val": metrics(p[va], label[va], group[va], thr),
    }
    np.savez_compressed(os.path.join(HERE, "data", "scores.npz"), p=p, split=split,
                        label=label, group=group, name=name)
    report["sha256"] = export_onnx(m, temp, thr, feats, args.out, args.version)
    if args.saved_model:
        export_saved_model(m, temp, len(feats), args.saved_model, args.version)
    print(json.dumps(report["test"], indent=1), file=sys.stderr)
    print(f"thresholds {thr} temperature {temp:.3f}", file=sys.stderr)

    if args.cv:
        report["cv"] = cross_validate(args, feats, split, label, group, x)
    with open(os.path.join(HERE, "metrics.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)


def cross_validate(args, feats, split, label, group, x):
    """Each tool/family the shipped model trained on is held out in turn; the groups the
    shipped model never saw already have their held-out numbers in report["test"]. With
    --cv-export every CV model is exported as the shipped one is (same graph, its own
    temperature and re-chosen thresholds in the metadata), so `exfilguard --model` loads it."""
    trained = sorted(set(group[(split == "train") & (label != 0)]) - {"synthetic"})
    if args.cv_groups:
        want = [g for g in args.cv_groups.split(",") if g]
        unknown = sorted(set(want) - set(trained))
        if unknown:
            sys.exit(f"--cv-groups: not a trained tool/family: {unknown} (trained: {trained})")
        trained = [g for g in trained if g in want]
    if args.cv_export:
        os.makedirs(args.cv_export, exist_ok=True)
    te = split == "test"
    cv = {}
    for g in trained:
        t0 = time.time()
        gm, gtemp, gthr, gp = fit_and_score(feats, split, label, group, x, {g}, args.epochs)
        flags = decide(gp, gthr)
        sel = group == g
        ben = (label == 0) & te
        cv[g] = {
            "rows": int(sel.sum()),
            "tpr": float(flags[sel].mean()),
            "thresholds": gthr,
            "benign_test_fpr": {s: float(flags[ben & (group == s)].mean())
                                for s in sorted(set(group[ben]))},
        }
        if args.cv_export:
            path = os.path.join(args.cv_export, f"{g}.onnx")
            cv[g]["temperature"] = gtemp
            cv[g]["onnx"] = path
            cv[g]["sha256"] = export_onnx(gm, gtemp, gthr, feats, path, f"{args.version}-cv-{g}")
            cv[g]["seconds"] = round(time.time() - t0, 1)
        print(g, json.dumps(cv[g]), file=sys.stderr)
        if args.cv_export:  # written after every model, so a cut-short run keeps what it has
            with open(os.path.join(args.cv_export, "cv.json"), "w") as f:
                json.dump({"epochs": args.epochs, "data": os.path.abspath(args.data), "cv": cv},
                          f, indent=1, sort_keys=True)
    return cv


if __name__ == "__main__":
    main()
