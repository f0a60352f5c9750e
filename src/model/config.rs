//! Hyperparameters of a Llama-like model, read from GGUF metadata and checked against the
//! tensors before anything is uploaded.

use super::ModelError;
use super::arch::{self, arch_key, block_tensor};
use crate::format::{DType, Metadata, TensorSource};
use crate::kernels::{WEIGHT_DTYPES, attention::MAX_HEAD_DIM};
use crate::reference::RopeConfig;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: String,
    pub n_vocab: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    /// The context length the model was trained with.
    pub n_ctx_train: u32,
    pub norm_eps: f32,
    pub rope: RopeConfig,
    /// The output projection reuses the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    /// Query features: n_head * head_dim.
    pub fn n_embd_q(&self) -> u32 {
        self.n_head * self.head_dim
    }

    /// K (and V) features per position: n_head_kv * head_dim.
    pub fn n_embd_kv(&self) -> u32 {
        self.n_head_kv * self.head_dim
    }

    /// A row of the attention projections' outputs side by side: q, then k, then v.
    pub fn n_embd_qkv(&self) -> u32 {
        self.n_embd_q() + 2 * self.n_embd_kv()
    }

    /// Reads the configuration and checks every tensor the forward pass needs: present, of the
    /// expected shape, and of a type the kernels run.
    pub fn from_metadata(meta: &Metadata, tensors: &dyn TensorSource) -> Result<Self, ModelError> {
        let arch = meta
            .get_str("general.architecture")
            .ok_or(ModelError::NoArchitecture)?
            .to_string();
        if !arch::LLAMA_LIKE.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        let uint = |key: &str| -> Result<Option<u32>, ModelError> {
            let full = arch_key(&arch, key);
            match meta.get(&full) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| ModelError::BadKey {
                        key: full,
                        message: format!("expected an unsigned integer below 2^32, found {v}"),
                    }),
            }
        };
        let required = |key: &str| -> Result<u32, ModelError> {
            uint(key)?.ok_or_else(|| ModelError::MissingKey(arch_key(&arch, key)))
        };
        let float = |key: &str| -> Result<Option<f32>, ModelError> {
            let full = arch_key(&arch, key);
            match meta.get(&full) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| Some(f as f32))
                    .ok_or_else(|| ModelError::BadKey {
                        key: full,
                        message: format!("expected a finite number, found {v}"),
                    }),
            }
        };

        let n_layer = required("block_count")?;
        let n_embd = required("embedding_length")?;
        let n_ff = required("feed_forward_length")?;
        let n_head = required("attention.head_count")?;
        let n_head_kv = uint("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ctx_train = uint("context_length")?.unwrap_or(4096);
        let norm_eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
        let freq_base = float("rope.freq_base")?.unwrap_or(10_000.0);

        let invalid = |m: String| Err(ModelError::Invalid(m));
        if n_layer == 0 {
            return invalid("block_count is 0".into());
        }
        if n_embd == 0 || n_ff == 0 {
            return invalid(format!(
                "embedding_length {n_embd} and feed_forward_length {n_ff} must be positive"
            ));
        }
        if n_head == 0 || n_head_kv == 0 {
            return invalid(format!(
                "head counts must be positive (head_count {n_head}, head_count_kv {n_head_kv})"
            ));
        }
        if n_head % n_head_kv != 0 {
            return invalid(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            ));
        }
        let head_dim = match uint("attention.key_length")? {
            Some(k) => k,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return invalid(format!(
                    "embedding_length {n_embd} is not a multiple of head_count {n_head}"
                ));
            }
        };
        if head_dim == 0 || head_dim % 4 != 0 || head_dim > MAX_HEAD_DIM {
            return invalid(format!(
                "head dimension {head_dim} is not a multiple of 4 in 4..={MAX_HEAD_DIM}"
            ));
        }
        if let Some(v) = uint("attention.value_length")?
            && v != head_dim
        {
            return invalid(format!(
                "value_length {v} differs from key_length {head_dim}"
            ));
        }
        let n_rot = uint("rope.dimension_count")?.unwrap_or(head_dim);
        if n_rot == 0 || n_rot % 2 != 0 || n_rot > head_dim {
            return invalid(format!(
                "rope.dimension_count {n_rot} must be even and in 2..={head_dim}"
            ));
        }
        if freq_base.is_nan() || freq_base <= 0.0 {
            return invalid(format!("rope.freq_base {freq_base} must be positive"));
        }
        let freq_scale = match meta.get_str(&arch_key(&arch, "rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = float("rope.scaling.factor")?.unwrap_or(1.0);
                if factor.is_nan() || factor <= 0.0 {
                    return invalid(format!("rope.scaling.factor {factor} must be positive"));
                }
                1.0 / factor
            }
            Some(other) => {
                return Err(ModelError::BadKey {
                    key: arch_key(&arch, "rope.scaling.type"),
                    message: format!("RoPE scaling {other:?} is not supported (none, linear)"),
                });
            }
        };

        let embd = tensors
            .tensor(arch::TOKEN_EMBD)
            .ok_or_else(|| ModelError::MissingTensor(arch::TOKEN_EMBD.into()))?;
        if embd.dims.len() != 2 || embd.dims[0] != u64::from(n_embd) {
            return Err(ModelError::TensorShape {
                name: arch::TOKEN_EMBD.into(),
                expected: vec![
                    u64::from(n_embd),
                    u64::from(uint("vocab_size")?.unwrap_or(0)),
                ],
                found: embd.dims.to_vec(),
            });
        }
        let n_vocab = u32::try_from(embd.dims[1])
            .map_err(|_| ModelError::Invalid("vocabulary too large".into()))?;
        if n_vocab == 0 {
            return invalid("the vocabulary is empty".into());
        }
        if let Some(v) = uint("vocab_size")?
            && v != n_vocab
        {
            return invalid(format!(
                "vocab_size {v} differs from the {n_vocab} rows of {}",
                arch::TOKEN_EMBD
            ));
        }
        let tied_embeddings = tensors.tensor(arch::OUTPUT).is_none();

        let cfg = LlamaConfig {
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            norm_eps,
            rope: RopeConfig {
                n_rot: n_rot as usize,
                freq_base,
                freq_scale,
                neox: false,
            },
            tied_embeddings,
        };
        cfg.check_tensors(tensors)?;
        Ok(cfg)
    }

    /// Every tensor the forward pass reads, with its expected GGUF dims.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (e, q, kv, ff) = (
            u64::from(self.n_embd),
            u64::from(self.n_embd_q()),
            u64::from(self.n_embd_kv()),
            u64::from(self.n_ff),
        );
        let mut v = vec![
            (
                arch::TOKEN_EMBD.to_string(),
                vec![e, u64::from(self.n_vocab)],
            ),
            (arch::OUTPUT_NORM.to_string(), vec![e]),
        ];
        if !self.tied_embeddings {
            v.push((arch::OUTPUT.to_string(), vec![e, u64::from(self.n_vocab)]));
        }
        for i in 0..self.n_layer {
            for (name, dims) in [
                (arch::ATTN_NORM, vec![e]),
                (arch::ATTN_Q, vec![e, q]),
                (arch::ATTN_K, vec![e, kv]),
                (arch::ATTN_V, vec![e, kv]),
                (arch::ATTN_OUTPUT, vec![q, e]),
                (arch::FFN_NORM, vec![e]),
                (arch::FFN_GATE, vec![e, ff]),
                (arch::FFN_UP, vec![e, ff]),
                (arch::FFN_DOWN, vec![ff, e]),
            ] {
                v.push((block_tensor(i, name), dims));
            }
        }
        v
    }

    fn check_tensors(&self, tensors: &dyn TensorSource) -> Result<(), ModelError> {
        for (name, dims) in self.expected_tensors() {
            let t = tensors
                .tensor(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            if t.dims != dims.as_slice() {
                return Err(ModelError::TensorShape {
                    name,
                    expected: dims,
                    found: t.dims.to_vec(),
                });
            }
            let is_norm = dims.len() == 1;
            let ok = if is_norm {
                matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16)
            } else {
                WEIGHT_DTYPES.contains(&t.dtype)
            };
            if !ok {
                let supported = if is_norm {
                    "F32, F16, BF16".to_string()
                } else {
                    WEIGHT_DTYPES
                        .iter()
                        .map(|d| d.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(ModelError::UnsupportedTensorType {
                    name,
                    dtype: t.dtype,
                    supported,
                });
            }
        }
        Ok(())
    }
}
