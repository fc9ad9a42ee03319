//! The sanctioned-resolver policy for encrypted DNS, end to end in the kernel: two network
//! namespaces (`support/lab.rs`), dnsmasq on the far side behind a real DNS-over-TLS server
//! (port 853) and a real DNS-over-HTTPS server (RFC 8484 POST on 443), both TLS, listening
//! on the resolver addresses 10.77.0.3 (known DoH endpoint, not sanctioned) and 10.77.0.4
//! (sanctioned), and an ordinary HTTPS site on 10.77.0.2. Clients: `kdig +tls` (DoT) and
//! `curl --http2` (DoH and HTTPS). `exfilguard protect` on the client side, in enforce and in
//! monitor mode. Needs root, kdig (knot-dnsutils), curl, openssl, python3 (the servers) and
//! dnsmasq; without them the tests fail loudly unless EXFILGUARD_SKIP_KERNEL_TESTS=1.

#[path = "support/lab.rs"]
mod lab;

use lab::{possible_with, Agent, Lab};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const TOOLS: [&str; 6] = ["ip", "kdig", "curl", "openssl", "python3", "dnsmasq"];

/// A DoT server (TLS, then DNS over TCP framing) on 853 and an HTTPS server on 443 (DoH at
/// /dns-query: POST application/dns-message, or GET ?dns=; anything else: a web page), each
/// query relayed to dnsmasq at 10.77.0.2:53.
const SERVERS: &str = r#"
import base64, socket, socketserver, ssl, struct, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
cert, key = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1", "dot"])

def resolve(q):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(q, ("10.77.0.2", 53))
    a = s.recv(65535)
    s.close()
    return a

def read(f, n):
    b = b""
    while len(b) < n:
        c = f.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b

class Dot(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            t = ctx.wrap_socket(self.request, server_side=True)
            while True:
                n = struct.unpack("!H", read(t, 2))[0]
                a = resolve(read(t, n))
                t.sendall(struct.pack("!H", len(a)) + a)
        except Exception:
            pass

class Web(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body, ctype):
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/dns-query?dns="):
            q = self.path.split("=", 1)[1]
            q = base64.urlsafe_b64decode(q + "=" * (-len(q) % 4))
            return self.answer(resolve(q), "application/dns-message")
        self.answer(b"an ordinary web page\n", "text/plain")
    def do_POST(self):
        q = self.rfile.read(int(self.headers["content-length"]))
        self.answer(resolve(q), "application/dns-message")
    def log_message(self, *a):
        pass

class TServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True

class THttp(socketserver.ThreadingMixIn, HTTPServer):
    allow_reuse_address = True
    daemon_threads = True

dot = TServer(("0.0.0.0", 853), Dot)
web = THttp(("0.0.0.0", 443), Web)
web.socket = ctx.wrap_socket(web.socket, server_side=True)
threading.Thread(target=dot.serve_forever, daemon=True).start()
print("serving", flush=True)
web.serve_forever()
"#;

/// The resolver a tunnel would pick: a known DoH endpoint the operator did not sanction.
const ROGUE: &str = "10.77.0.3";
/// The organisation's resolver.
const SANCTIONED: &str = "10.77.0.4";
/// An ordinary HTTPS site.
const WEB: &str = "10.77.0.2";

/// A lab with dnsmasq and the TLS servers up, or `None` when the test cannot run here.
fn lab(tag: &str) -> Option<Lab> {
    if !possible_with(&TOOLS) {
        return None;
    }
    let mut lab = Lab::new(tag);
    lab.start_dns();
    let (cert, key) = (lab.work.join("cert.pem"), lab.work.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=resolver.test"])
        .args([
            "-addext",
            "subjectAltName=IP:10.77.0.2,IP:10.77.0.3,IP:10.77.0.4",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = lab.work.join("servers.py");
    std::fs::write(&script, SERVERS).unwrap();
    lab.spawn_server(&[
        "python3",
        script.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    ]);
    // the servers are up once the web page answers (bounded wait)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let probe = Lab::in_ns(
            &lab.sns(),
            &["curl", "-sk", "--max-time", "2", "https://10.77.0.2/"],
        )
        .output()
        .unwrap();
        if String::from_utf8_lossy(&probe.stdout).contains("ordinary web page") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TLS servers did not start: {}",
            std::fs::read_to_string(lab.work.join("python3.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(lab)
}

/// The agent's configuration for these tests: the resolvers' addresses come from a
/// `doh_endpoints_file` (the refreshable list), 10.77.0.4 is sanctioned.
fn configure(lab: &Lab) {
    let file = lab.work.join("doh-endpoints.txt");
    std::fs::write(
        &file,
        "# lab resolvers\n10.77.0.3\n10.77.0.4/32 # the sanctioned one is on the list too\n",
    )
    .unwrap();
    // every test of this file sets the same values
    std::env::set_var(
        "EXFILGUARD__ENCRYPTED_DNS__DOH_ENDPOINTS_FILE",
        file.to_str().unwrap(),
    );
    std::env::set_var(
        "EXFILGUARD__ENCRYPTED_DNS__SANCTIONED",
        format!("[\"{SANCTIONED}\"]"),
    );
}

/// DoT: `kdig +tls` for www.example.test; (answered with dnsmasq's address, output).
fn dot(lab: &Lab, server: &str) -> (bool, String) {
    let out = Lab::in_ns(
        &lab.cns(),
        &[
            "kdig",
            "+tls",
            "+short",
            "+timeout=3",
            "+retry=0",
            &format!("@{server}"),
            "www.example.test",
            "A",
        ],
    )
    .output()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.lines().any(|l| l.trim() == "10.77.0.99"), text)
}

/// DoH: `curl --http2` POSTing an RFC 8484 query; (answered with dnsmasq's address, output).
fn doh(lab: &Lab, server: &str) -> (bool, String) {
    // www.example.test A, id 0
    let q: &[u8] = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x04test\x00\x00\x01\x00\x01";
    let qfile = lab.work.join("query.bin");
    std::fs::write(&qfile, q).unwrap();
    let out = Lab::in_ns(
        &lab.cns(),
        &[
            "curl",
            "--http2",
            "-sS",
            "-k",
            "--max-time",
            "5",
            "-H",
            "content-type: application/dns-message",
            "-H",
            "accept: application/dns-message",
            "--data-binary",
            &format!("@{}", qfile.display()),
            &format!("https://{server}/dns-query"),
        ],
    )
    .output()
    .unwrap();
    let answered = out.status.success() && out.stdout.windows(4).any(|w| w == [10, 77, 0, 99]);
    (answered, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Ordinary HTTPS: `curl --http2` fetching a page.
fn https(lab: &Lab, server: &str) -> (bool, String) {
    let out = Lab::in_ns(
        &lab.cns(),
        &[
            "curl",
            "--http2",
            "-sS",
            "-k",
            "--max-time",
            "5",
            &format!("https://{server}/"),
        ],
    )
    .output()
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).contains("ordinary web page"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Encrypted-DNS records to `dst`, waited for (bounded).
fn records(agent: &Agent, dst: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r: Vec<Value> = agent
            .lines()
            .into_iter()
            .filter(|v| v["event"] == "encrypted_dns" && v["dst"] == dst)
            .collect();
        if r.len() >= want || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has(recs: &[Value], comm: &str, dport: u64, reason: &str, decision: &str) -> bool {
    recs.iter().any(|v| {
        v["process"]["comm"] == comm
            && v["dport"] == dport
            && v["decision"] == decision
            && v["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == reason))
            && v["verdict"]["reasons"][0]
                .as_str()
                .is_some_and(|t| t.contains("not a sanctioned resolver") && t.contains(comm))
    })
}

/// Every control: the sanctioned resolver answers over DoT and DoH, and ordinary HTTPS works.
fn controls(lab: &Lab, agent: &Agent) {
    let (ok, text) = dot(lab, SANCTIONED);
    assert!(ok, "DoT to the sanctioned resolver failed: {text}");
    let (ok, text) = doh(lab, SANCTIONED);
    assert!(ok, "DoH to the sanctioned resolver failed: {text}");
    let (ok, text) = https(lab, WEB);
    assert!(ok, "ordinary HTTPS broken: {text}");
    std::thread::sleep(Duration::from_millis(300));
    for dst in [SANCTIONED, WEB] {
        let r = records(agent, dst, 0);
        assert!(r.is_empty(), "records for {dst}: {r:#?}");
    }
}

#[test]
fn enforce_refuses_dot_and_doh_to_unsanctioned_resolvers() {
    let Some(lab) = lab("x") else { return };
    configure(&lab);
    let agent = Agent::start(&lab, &[]);

    let (ok, text) = dot(&lab, ROGUE);
    assert!(!ok, "DoT to an unsanctioned resolver answered: {text}");
    assert!(
        text.contains("Operation not permitted") || text.contains("failed"),
        "kdig: {text}"
    );
    let (ok, text) = doh(&lab, ROGUE);
    assert!(!ok, "DoH to an unsanctioned resolver answered: {text}");
    controls(&lab, &agent);

    let recs = records(&agent, ROGUE, 2);
    assert!(
        has(&recs, "kdig", 853, "dot_port", "blocked"),
        "no DoT record naming kdig: {recs:#?}"
    );
    assert!(
        has(&recs, "curl", 443, "doh_endpoint", "blocked"),
        "no DoH record naming curl: {recs:#?}"
    );
    let lines = agent.stop();
    let summary = lines
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("summary");
    assert!(
        summary["kernel"]["encdns_denied"].as_u64().unwrap_or(0) >= 2,
        "{summary}"
    );
    assert!(
        summary["kernel"]["encdns_sanctioned"].as_u64().unwrap_or(0) >= 2,
        "{summary}"
    );
}

#[test]
fn monitor_reports_dot_and_doh_to_unsanctioned_resolvers() {
    let Some(lab) = lab("y") else { return };
    configure(&lab);
    let agent = Agent::start(&lab, &["--monitor"]);

    let (ok, text) = dot(&lab, ROGUE);
    assert!(ok, "monitor mode: DoT must still work: {text}");
    let (ok, text) = doh(&lab, ROGUE);
    assert!(ok, "monitor mode: DoH must still work: {text}");
    controls(&lab, &agent);

    let recs = records(&agent, ROGUE, 2);
    assert!(
        has(&recs, "kdig", 853, "dot_port", "reported"),
        "no DoT report naming kdig: {recs:#?}"
    );
    assert!(
        has(&recs, "curl", 443, "doh_endpoint", "reported"),
        "no DoH report naming curl: {recs:#?}"
    );
    let lines = agent.stop();
    let summary = lines
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("summary");
    assert!(
        summary["kernel"]["encdns_reported"].as_u64().unwrap_or(0) >= 2,
        "{summary}"
    );
    assert_eq!(
        summary["kernel"]["encdns_denied"].as_u64(),
        Some(0),
        "{summary}"
    );
}
