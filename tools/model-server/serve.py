#!/usr/bin/env python3
"""A small model runtime for exfilguard's ONNX model, speaking the two protocols
`exfilguard resolve` can call remotely:

  TensorFlow Serving REST  POST /v1/models/NAME[/versions/V]:predict  {"instances": [[...45 floats]]}
                                                                     -> {"predictions": [[p_benign, p_tunnel, p_dga]]}
  KServe v2 (Open Inference) POST /v2/models/NAME[/versions/V]/infer  {"inputs": [{"name": "features",
                                                                     "shape": [n, 45], "datatype": "FP32", "data": [...]}]}
                                                                     -> {"outputs": [{"shape": [n, 3], "data": [...]}]}

It runs the same .onnx file the binary embeds, with onnxruntime: the test harness uses it as a
real, independent runtime (and kills it mid-run), and operators can use it to try the remote
mode before pointing exfilguard at TF Serving, Triton or KServe.

    pip install onnxruntime numpy
    python3 tools/model-server/serve.py --model crates/exfilguard-detect/assets/exfilguard.onnx --listen 127.0.0.1:8501
"""

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="path of the .onnx file")
    ap.add_argument("--name", default="exfilguard", help="model name in the URL")
    ap.add_argument("--version", default="1", help="model version in the URL")
    ap.add_argument("--listen", default="127.0.0.1:8501", help="ip:port")
    args = ap.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    n_features = inp.shape[1]
    meta = session.get_modelmeta().custom_metadata_map
    classes = meta.get("exfilguard.classes", "").split(",")
    v1 = re.compile(r"^/v1/models/([^/:]+)(?:/versions/([^/:]+))?:predict$")
    v2 = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")

    def run(rows):
        x = np.asarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != n_features:
            raise ValueError(f"expected rows of {n_features} features, got shape {list(x.shape)}")
        return session.run(None, {inp.name: x})[0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet: one line per request is noise at q/s rates
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def model_ok(self, name, version):
            if name != args.name or (version is not None and version != args.version):
                self.reply(404, {"error": f"model {name}:{version} not found (serving {args.name}:{args.version})"})
                return False
            return True

        def do_GET(self):
            if self.path in ("/v2/health/ready", "/v2/health/live"):
                return self.reply(200, {})
            if self.path.rstrip("/") in (f"/v1/models/{args.name}", f"/v2/models/{args.name}"):
                return self.reply(200, {
                    "name": args.name, "versions": [args.version], "classes": classes,
                    "model_version_status": [{"version": args.version, "state": "AVAILABLE"}],
                })
            self.reply(404, {"error": "not found"})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, json.JSONDecodeError) as e:
                return self.reply(400, {"error": f"bad JSON: {e}"})
            try:
                m = v1.match(self.path)
                if m:
                    if not self.model_ok(*m.groups()):
                        return
                    out = run(body["instances"])
                    return self.reply(200, {"predictions": out.tolist()})
                m = v2.match(self.path)
                if m:
                    if not self.model_ok(*m.groups()):
                        return
                    t = body["inputs"][0]
                    rows = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
                    out = run(rows)
                    return self.reply(200, {
                        "model_name": args.name, "model_version": args.version,
                        "outputs": [{"name": "probabilities", "datatype": "FP32",
                                     "shape": list(out.shape), "data": out.reshape(-1).tolist()}],
                    })
            except (KeyError, IndexError, TypeError, ValueError) as e:
                return self.reply(400, {"error": str(e)})
            self.reply(404, {"error": "not found"})

    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    print(f"serving {args.name}:{args.version} ({args.model}, {n_features} features, classes {classes}) on {args.listen}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
