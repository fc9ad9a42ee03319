//! Remote model runtimes (dnstun parity): the features are computed here, by the same code as
//! everywhere else, and sent to a model server — TensorFlow Serving's REST predict API or the
//! KServe v2 inference protocol — that returns the class probabilities; the verdict (threshold,
//! reasons) is then made locally. Unlike dnstun (SERVFAIL while the runtime is down) a failure
//! or a deadline falls back to the embedded model, counted and logged, and the runtime is left
//! alone for `retry_secs` so a dead one costs one timeout, not one per query.

use exfilguard_detect::{extract, Detector, Features, ModelError, Verdict};
use exfilguard_dns::DnsName;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `POST /v1/models/NAME/versions/V:predict`, `{"instances": …}` → `{"predictions": …}`.
    TfServing,
    /// `POST /v2/models/NAME/versions/V/infer` (Open Inference Protocol: KServe, Triton, MLServer).
    KserveV2,
}

/// Order of the runtime's outputs (dnstun's `mapping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mapping {
    /// The model's own class order (exfilguard's: benign, tunnel, dga; two-class: benign, malicious).
    Forward,
    /// Reversed (two-class models that put the malicious probability first).
    Reverse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Base URL, e.g. `http://10.0.0.9:8501`; empty: the embedded model only.
    pub url: String,
    pub protocol: Protocol,
    /// `detector NAME:VERSION` in dnstun's terms.
    pub model: String,
    pub version: String,
    pub mapping: Mapping,
    /// Input tensor name (KServe v2).
    pub input: String,
    /// Deadline of one call; past it the embedded model answers.
    pub timeout_ms: u64,
    /// After a failure the runtime is not called for this long.
    pub retry_secs: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            protocol: Protocol::TfServing,
            model: "exfilguard".into(),
            version: "1".into(),
            mapping: Mapping::Forward,
            input: "features".into(),
            timeout_ms: 100,
            retry_secs: 5,
        }
    }
}

impl RuntimeSettings {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        match self.protocol {
            Protocol::TfServing => {
                format!(
                    "{base}/v1/models/{}/versions/{}:predict",
                    self.model, self.version
                )
            }
            Protocol::KserveV2 => {
                format!(
                    "{base}/v2/models/{}/versions/{}/infer",
                    self.model, self.version
                )
            }
        }
    }

    /// Problems a config check reports, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.enabled() && !self.url.starts_with("http://") {
            out.push(format!(
                "runtime.url = {:?}: must be http://host:port (put TLS in a local proxy)",
                self.url
            ));
        }
        if self.model.is_empty() || self.model.contains(['/', ':']) {
            out.push(format!("runtime.model = {:?}: a model name", self.model));
        }
        if self.version.is_empty() || self.version.contains(['/', ':']) {
            out.push(format!("runtime.version = {:?}: a version", self.version));
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            out.push(format!(
                "runtime.timeout_ms = {}: must be in 1..=10000",
                self.timeout_ms
            ));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("deadline of {0} ms passed")]
    Timeout(u64),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("transport: {0}")]
    Transport(String),
    #[error("unusable answer: {0}")]
    Answer(String),
    #[error("backing off after a failure")]
    BackingOff,
}

impl RuntimeError {
    fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Status(_) => "http_status",
            Self::Transport(_) => "transport",
            Self::Answer(_) => "bad_answer",
            Self::BackingOff => "backing_off",
        }
    }
}

#[derive(Clone)]
pub struct RuntimeMetrics {
    /// `result`: ok, timeout, http_status, transport, bad_answer.
    pub calls: Family<Labels, Counter>,
    /// Names the embedded model judged because the runtime could not: `reason` as above plus
    /// backing_off.
    pub fallbacks: Family<Labels, Counter>,
    pub seconds: Histogram,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            fallbacks: Family::default(),
            seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 14)),
        }
    }
}

impl RuntimeMetrics {
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        reg.register(
            "exfilguard_runtime_calls",
            "Calls to the remote model runtime, by result",
            self.calls.clone(),
        );
        reg.register(
            "exfilguard_runtime_fallbacks",
            "Names judged by the embedded model because the remote runtime could not, by reason",
            self.fallbacks.clone(),
        );
        reg.register(
            "exfilguard_runtime_seconds",
            "Round-trip time of successful remote model calls",
            self.seconds.clone(),
        );
    }
}

/// A remote runtime with the embedded model behind it.
pub struct Remote {
    settings: RuntimeSettings,
    endpoint: String,
    agent: ureq::Agent,
    down_until: Mutex<Option<Instant>>,
    metrics: RuntimeMetrics,
}

impl Remote {
    pub fn new(settings: RuntimeSettings, metrics: RuntimeMetrics) -> Self {
        let t = Duration::from_millis(settings.timeout_ms);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(t))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            endpoint: settings.endpoint(),
            settings,
            agent,
            down_until: Mutex::new(None),
            metrics,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Row-major probabilities in the local model's class order (`k` classes, benign at
    /// `benign`), from the runtime.
    pub fn predict(
        &self,
        feats: &[Features],
        k: usize,
        benign: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let n = feats.len();
        let body = match self.settings.protocol {
            Protocol::TfServing => json!({
                "instances": feats.iter().map(|f| f.values.to_vec()).collect::<Vec<_>>()
            }),
            Protocol::KserveV2 => json!({"inputs": [{
                "name": self.settings.input,
                "shape": [n, exfilguard_detect::N_FEATURES],
                "datatype": "FP32",
                "data": feats.iter().flat_map(|f| f.values.iter().copied()).collect::<Vec<f32>>(),
            }]}),
        };
        let t0 = Instant::now();
        let mut resp = self
            .agent
            .post(&self.endpoint)
            .send_json(&body)
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => RuntimeError::Timeout(self.settings.timeout_ms),
                other => RuntimeError::Transport(other.to_string()),
            })?;
        if resp.status() != 200 {
            return Err(RuntimeError::Status(resp.status().as_u16()));
        }
        let v: Value = resp.body_mut().read_json().map_err(|e| match e {
            ureq::Error::Timeout(_) => RuntimeError::Timeout(self.settings.timeout_ms),
            other => RuntimeError::Answer(other.to_string()),
        })?;
        let elapsed = t0.elapsed().as_secs_f64();
        let rows = parse_rows(&v, self.settings.protocol, n)?;
        let mut out = Vec::with_capacity(n * k);
        for mut row in rows {
            if self.settings.mapping == Mapping::Reverse {
                row.reverse();
            }
            out.extend(to_local(&row, k, benign)?);
        }
        self.metrics.seconds.observe(elapsed);
        Ok(out)
    }

    /// The verdict for one name: from the runtime when it answers in time, else from the
    /// embedded model. `Err` only when the embedded model fails too.
    pub fn classify(&self, det: &Detector, name: &DnsName) -> Result<Verdict, ModelError> {
        if let Some(v) = det.list_verdict(name) {
            return Ok(v);
        }
        let reason = match self.try_remote(det, name) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        self.metrics
            .fallbacks
            .get_or_create(&vec![("reason", reason.label().to_string())])
            .inc();
        det.classify(name)
    }

    fn try_remote(&self, det: &Detector, name: &DnsName) -> Result<Verdict, RuntimeError> {
        let probing = {
            let mut down = self.down_until.lock().expect("lock");
            match *down {
                Some(t) if Instant::now() < t => return Err(RuntimeError::BackingOff),
                Some(_) => {
                    // time to try again: this caller probes, concurrent ones keep backing off
                    *down = Some(Instant::now() + Duration::from_secs(self.settings.retry_secs));
                    true
                }
                None => false,
            }
        };
        let f = extract(name, det.lexicon());
        let model = det.model();
        let result = self.predict(
            std::slice::from_ref(&f),
            model.info().classes.len(),
            model.benign_index(),
        );
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics
            .calls
            .get_or_create(&vec![("result", label.to_string())])
            .inc();
        match result {
            Ok(p) => {
                if probing {
                    *self.down_until.lock().expect("lock") = None;
                    tracing::info!(endpoint = %self.endpoint, "model runtime answering again");
                }
                let mut v = det.decide(&f, &p);
                v.reasons.push(format!(
                    "remote runtime {}:{} ({:?})",
                    self.settings.model, self.settings.version, self.settings.protocol
                ));
                Ok(v)
            }
            Err(e) => {
                let mut down = self.down_until.lock().expect("lock");
                if down.is_none() {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, retry_secs = self.settings.retry_secs,
                        "model runtime failed: the embedded model judges until the retry");
                }
                *down = Some(Instant::now() + Duration::from_secs(self.settings.retry_secs));
                Err(e)
            }
        }
    }
}

fn floats(v: &Value, what: &str) -> Result<Vec<f32>, RuntimeError> {
    let arr = v
        .as_array()
        .ok_or_else(|| RuntimeError::Answer(format!("{what} is not an array")))?;
    arr.iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite() && (-1e-3..=1.001).contains(f))
                .ok_or_else(|| RuntimeError::Answer(format!("{what}: {x} is not a probability")))
        })
        .collect()
}

/// The rows of probabilities in a TF Serving or KServe v2 answer.
fn parse_rows(v: &Value, protocol: Protocol, n: usize) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let rows = match protocol {
        Protocol::TfServing => {
            let p = v
                .get("predictions")
                .and_then(|p| p.as_array())
                .ok_or_else(|| RuntimeError::Answer("no \"predictions\" array".into()))?;
            p.iter()
                .map(|r| floats(r, "prediction"))
                .collect::<Result<Vec<_>, _>>()?
        }
        Protocol::KserveV2 => {
            let o = v
                .get("outputs")
                .and_then(|o| o.get(0))
                .ok_or_else(|| RuntimeError::Answer("no \"outputs\"".into()))?;
            let data = floats(
                o.get("data")
                    .ok_or_else(|| RuntimeError::Answer("output without data".into()))?,
                "data",
            )?;
            let shape: Vec<usize> = o
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as usize)
                        .collect()
                })
                .unwrap_or_default();
            let cols = match shape.as_slice() {
                [r, c] if *r == n && r * c == data.len() => *c,
                other => {
                    return Err(RuntimeError::Answer(format!(
                        "output shape {other:?} for {n} rows and {} values",
                        data.len()
                    )))
                }
            };
            data.chunks(cols.max(1)).map(|c| c.to_vec()).collect()
        }
    };
    if rows.len() != n {
        return Err(RuntimeError::Answer(format!(
            "{} rows for {n} names",
            rows.len()
        )));
    }
    Ok(rows)
}

/// A runtime row in the local class order: the same classes, or a two-class
/// (benign, malicious) model whose malicious probability goes to the first malicious class.
fn to_local(row: &[f32], k: usize, benign: usize) -> Result<Vec<f32>, RuntimeError> {
    if row.len() == k {
        return Ok(row.to_vec());
    }
    if row.len() == 2 {
        let mut out = vec![0.0; k];
        out[benign] = row[0];
        let first_bad = (0..k).find(|&i| i != benign).unwrap_or(0);
        out[first_bad] = row[1];
        return Ok(out);
    }
    Err(RuntimeError::Answer(format!(
        "{} outputs per name, the local model has {k} classes",
        row.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_each_protocol() {
        let mut s = RuntimeSettings {
            url: "http://10.0.0.9:8501/".into(),
            ..Default::default()
        };
        assert_eq!(
            s.endpoint(),
            "http://10.0.0.9:8501/v1/models/exfilguard/versions/1:predict"
        );
        s.protocol = Protocol::KserveV2;
        assert_eq!(
            s.endpoint(),
            "http://10.0.0.9:8501/v2/models/exfilguard/versions/1/infer"
        );
        assert!(s.problems().is_empty());
        s.url = "https://x".into();
        s.timeout_ms = 0;
        assert_eq!(s.problems().len(), 2);
    }

    #[test]
    fn answers_are_checked_and_mapped() {
        let tf = json!({"predictions": [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]});
        let rows = parse_rows(&tf, Protocol::TfServing, 2).unwrap();
        assert_eq!(rows[1], vec![0.1, 0.8, 0.1]);
        assert!(
            parse_rows(&tf, Protocol::TfServing, 3).is_err(),
            "row count"
        );
        let bad = json!({"predictions": [[0.9, "x", 0.05]]});
        assert!(parse_rows(&bad, Protocol::TfServing, 1).is_err());
        let nan = json!({"predictions": [[7.0, 0.0, 0.0]]});
        assert!(
            parse_rows(&nan, Protocol::TfServing, 1).is_err(),
            "not a probability"
        );
        let v2 = json!({"outputs": [{"shape": [2, 3], "data": [0.9, 0.05, 0.05, 0.1, 0.8, 0.1]}]});
        assert_eq!(parse_rows(&v2, Protocol::KserveV2, 2).unwrap(), rows);
        let v2bad = json!({"outputs": [{"shape": [2, 2], "data": [0.9, 0.05, 0.05]}]});
        assert!(parse_rows(&v2bad, Protocol::KserveV2, 2).is_err());
        // a two-class (benign, malicious) model feeds the first malicious class
        assert_eq!(to_local(&[0.2, 0.8], 3, 0).unwrap(), vec![0.2, 0.8, 0.0]);
        assert!(to_local(&[0.2, 0.3, 0.3, 0.2], 3, 0).is_err());
    }

    #[test]
    fn a_dead_runtime_falls_back_and_backs_off() {
        // a port nobody listens on: connection refused
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let m = RuntimeMetrics::default();
        let r = Remote::new(
            RuntimeSettings {
                url: format!("http://127.0.0.1:{port}"),
                ..Default::default()
            },
            m.clone(),
        );
        let det = Detector::embedded().unwrap();
        let t = "mfzwizltoq2dknbvgy3tqojqgezdgnbvgy3tqojqgezdgnbv.nbswy3dpeb3w64tmmq.tun.test.com";
        let name = DnsName::parse(t).unwrap();
        for _ in 0..3 {
            let v = r.classify(&det, &name).unwrap();
            assert!(v.class.is_malicious(), "the embedded model still judges");
        }
        let get = |f: &Family<Labels, Counter>, k: &'static str, v: &str| {
            f.get_or_create(&vec![(k, v.to_string())]).get()
        };
        assert_eq!(
            get(&m.calls, "result", "transport"),
            1,
            "one call, then back-off"
        );
        assert_eq!(get(&m.fallbacks, "reason", "transport"), 1);
        assert_eq!(get(&m.fallbacks, "reason", "backing_off"), 2);
    }
}
