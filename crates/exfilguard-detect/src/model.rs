//! The DNN classifier: an ONNX graph run in-process by tract. The graph takes the raw feature
//! vector (standardisation is inside it) and returns calibrated class probabilities.
//!
//! The ONNX file carries its own contract in `metadata_props`: the feature names it was trained
//! on (checked against [`FEATURE_NAMES`] at load, so training and serving cannot drift), the
//! class order and the decision threshold chosen on validation data.

use crate::features::{Features, FEATURE_NAMES, N_FEATURES};
use std::sync::Arc;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read ONNX model: {0}")]
    Onnx(String),
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("model was trained on features [{trained}] but this build computes [{ours}]")]
    FeatureMismatch { trained: String, ours: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Output classes in model order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelClass {
    Benign,
    Tunnel,
    Dga,
}

impl std::str::FromStr for ModelClass {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "benign" => Ok(Self::Benign),
            "tunnel" => Ok(Self::Tunnel),
            "dga" => Ok(Self::Dga),
            other => Err(ModelError::Metadata(format!("unknown class {other:?}"))),
        }
    }
}

/// What the model file says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub version: String,
    pub classes: Vec<ModelClass>,
    /// Per class (in `classes` order), the calibrated probability at or above which a name is
    /// of that class; unused (1.0) for benign.
    pub thresholds: Vec<f32>,
    pub features: Vec<String>,
    pub sha256: String,
}

pub struct Model {
    plan: Arc<TypedRunnableModel>,
    info: ModelInfo,
    benign_index: usize,
}

static EMBEDDED: &[u8] = include_bytes!("../assets/exfilguard.onnx");

/// Largest batch handed to tract at once (bounded memory per call).
pub const MAX_BATCH: usize = 4096;

impl Model {
    /// The model embedded in the binary.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::from_bytes(EMBEDDED)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let onnx = |e: TractError| ModelError::Onnx(format!("{e:#}"));
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(onnx)?;
        let prop = |key: &str| -> Result<String, ModelError> {
            let t = model
                .properties
                .get(&format!("onnx.metadata_props.{key}"))
                .ok_or_else(|| ModelError::Metadata(format!("missing metadata_props[{key}]")))?;
            t.try_as_plain_ram()
                .and_then(|v| v.to_scalar::<String>().cloned())
                .map_err(|e| ModelError::Metadata(format!("{key}: {e}")))
        };
        let features: Vec<String> = prop("exfilguard.features")?
            .split(',')
            .map(str::to_owned)
            .collect();
        if features != FEATURE_NAMES {
            return Err(ModelError::FeatureMismatch {
                trained: features.join(","),
                ours: FEATURE_NAMES.join(","),
            });
        }
        let classes = prop("exfilguard.classes")?
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<ModelClass>, _>>()?;
        let benign_index = classes
            .iter()
            .position(|c| *c == ModelClass::Benign)
            .ok_or_else(|| ModelError::Metadata("no benign class".into()))?;
        let mut thresholds = vec![1.0f32; classes.len()];
        for entry in prop("exfilguard.thresholds")?.split(',') {
            let bad = || ModelError::Metadata(format!("thresholds: bad entry {entry:?}"));
            let (class, value) = entry.split_once(':').ok_or_else(bad)?;
            let class: ModelClass = class.parse()?;
            let value: f32 = value.parse().map_err(|_| bad())?;
            if !(0.0..=1.0).contains(&value) {
                return Err(ModelError::Metadata(format!(
                    "threshold {value} is not a probability"
                )));
            }
            let i = classes.iter().position(|c| *c == class).ok_or_else(bad)?;
            thresholds[i] = value;
        }
        let version = prop("exfilguard.version")?;
        let batch = model.sym("batch");
        let plan = model
            .with_input_fact(0, f32::fact([batch.to_dim(), N_FEATURES.to_dim()]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(onnx)?;
        let info = ModelInfo {
            version,
            classes,
            thresholds,
            features,
            sha256: sha256_hex(bytes),
        };
        let model = Self {
            plan,
            info,
            benign_index,
        };
        // Fail at load, not on the first query: the graph must map N features to one
        // probability per class.
        let probe = model.predict_raw(&[0.0; N_FEATURES], 1)?;
        if probe.len() != model.info.classes.len() {
            return Err(ModelError::Metadata(format!(
                "graph returns {} outputs per name, metadata lists {} classes",
                probe.len(),
                model.info.classes.len()
            )));
        }
        Ok(model)
    }

    /// Overrides every malicious class's threshold (an operator's own operating point).
    pub fn set_threshold(&mut self, threshold: f32) {
        let b = self.benign_index;
        for (i, t) in self.info.thresholds.iter_mut().enumerate() {
            if i != b {
                *t = threshold;
            }
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn benign_index(&self) -> usize {
        self.benign_index
    }

    /// Class probabilities for each feature vector, row-major: row i is
    /// `out[i * k..(i + 1) * k]` with k classes in [`ModelInfo::classes`] order.
    pub fn predict(&self, batch: &[Features]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(batch.len() * self.info.classes.len());
        let mut flat = Vec::with_capacity(batch.len().min(MAX_BATCH) * N_FEATURES);
        for chunk in batch.chunks(MAX_BATCH) {
            flat.clear();
            for f in chunk {
                flat.extend_from_slice(&f.values);
            }
            out.extend(self.predict_raw(&flat, chunk.len())?);
        }
        Ok(out)
    }

    /// Runs the graph on `rows` row-major feature vectors; returns row-major probabilities.
    pub fn predict_raw(&self, flat: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let err = |e: TractError| ModelError::Inference(format!("{e:#}"));
        let input = Tensor::from_shape(&[rows, N_FEATURES], flat).map_err(err)?;
        let result = self.plan.run(tvec!(input.into())).map_err(err)?;
        let view = result[0].to_plain_array_view::<f32>().map_err(err)?;
        Ok(view.iter().copied().collect())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
