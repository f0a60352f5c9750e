//! The Llama forward pass on the CPU in plain f32, over dequantized weights: what the GPU model is
//! tested against, position by position.

use super::{
    AttentionShape, add, attention, dequantize, embed, matmul, rms_norm, rope, round_kv, silu_mul,
};
use crate::format::TensorSource;
use crate::kernels::{KernelError, KvType};
use crate::model::LlamaConfig;
use crate::model::arch::{self, block_tensor};

struct Layer {
    attn_norm: Vec<f32>,
    attn_q: Vec<f32>,
    attn_k: Vec<f32>,
    attn_v: Vec<f32>,
    attn_output: Vec<f32>,
    ffn_norm: Vec<f32>,
    ffn_gate: Vec<f32>,
    ffn_up: Vec<f32>,
    ffn_down: Vec<f32>,
}

/// Named intermediate activations, in the order they were computed.
pub type Trace = Vec<(String, Vec<f32>)>;

pub struct ReferenceLlama {
    cfg: LlamaConfig,
    token_embd: Vec<f32>,
    output_norm: Vec<f32>,
    output: Option<Vec<f32>>,
    layers: Vec<Layer>,
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    n_past: usize,
    kv_type: KvType,
}

fn load(src: &dyn TensorSource, name: &str) -> Result<Vec<f32>, KernelError> {
    let t = src.tensor(name).ok_or_else(|| {
        crate::kernels::shape_error("reference", format!("tensor {name} is missing"))
    })?;
    dequantize(t.dtype, t.data, t.n_elements() as usize)
}

impl ReferenceLlama {
    pub fn load(cfg: &LlamaConfig, src: &dyn TensorSource) -> Result<Self, KernelError> {
        let mut layers = Vec::with_capacity(cfg.n_layer as usize);
        for i in 0..cfg.n_layer {
            let w = |name: &str| load(src, &block_tensor(i, name));
            layers.push(Layer {
                attn_norm: w(arch::ATTN_NORM)?,
                attn_q: w(arch::ATTN_Q)?,
                attn_k: w(arch::ATTN_K)?,
                attn_v: w(arch::ATTN_V)?,
                attn_output: w(arch::ATTN_OUTPUT)?,
                ffn_norm: w(arch::FFN_NORM)?,
                ffn_gate: w(arch::FFN_GATE)?,
                ffn_up: w(arch::FFN_UP)?,
                ffn_down: w(arch::FFN_DOWN)?,
            });
        }
        Ok(ReferenceLlama {
            cfg: cfg.clone(),
            token_embd: load(src, arch::TOKEN_EMBD)?,
            output_norm: load(src, arch::OUTPUT_NORM)?,
            output: if cfg.tied_embeddings {
                None
            } else {
                Some(load(src, arch::OUTPUT)?)
            },
            layers,
            k_cache: vec![Vec::new(); cfg.n_layer as usize],
            v_cache: vec![Vec::new(); cfg.n_layer as usize],
            n_past: 0,
            kv_type: KvType::F32,
        })
    }

    /// Stores K and V rounded as a GPU model with a cache of `kv_type` does.
    pub fn with_kv_type(mut self, kv_type: KvType) -> Self {
        self.kv_type = kv_type;
        self
    }

    /// Positions already in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Runs `tokens` at positions n_past.. and returns their logits (n_tokens, n_vocab). With a
    /// trace, records the activations named as in the reference layer dump.
    pub fn forward(&mut self, tokens: &[u32], mut trace: Option<&mut Trace>) -> Vec<f32> {
        let c = &self.cfg;
        let (n_embd, n_ff) = (c.n_embd as usize, c.n_ff as usize);
        let n_q = c.n_embd_q() as usize;
        let shape = AttentionShape {
            n_head: c.n_head as usize,
            n_head_kv: c.n_head_kv as usize,
            head_dim: c.head_dim as usize,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        };
        let positions: Vec<u32> = (self.n_past..self.n_past + tokens.len())
            .map(|p| p as u32)
            .collect();
        let mut record = |name: String, v: &[f32]| {
            if let Some(t) = trace.as_deref_mut() {
                t.push((name, v.to_vec()));
            }
        };

        let mut x = embed(&self.token_embd, n_embd, tokens); // (T, n_embd)
        record("embd".into(), &x);
        for (i, l) in self.layers.iter().enumerate() {
            let xn = rms_norm(&x, &l.attn_norm, c.norm_eps);
            record(format!("blk.{i}.attn_norm"), &xn);
            let mut q = matmul(&xn, &l.attn_q, n_embd); // (T, n_q)
            let mut k = matmul(&xn, &l.attn_k, n_embd); // (T, n_kv)
            let v = matmul(&xn, &l.attn_v, n_embd);
            rope(&mut q, shape.n_head, shape.head_dim, &positions, c.rope);
            rope(&mut k, shape.n_head_kv, shape.head_dim, &positions, c.rope);
            record(format!("blk.{i}.q_rope"), &q);
            record(format!("blk.{i}.k_rope"), &k);
            let mut v = v;
            round_kv(&mut k, self.kv_type);
            round_kv(&mut v, self.kv_type);
            self.k_cache[i].extend_from_slice(&k);
            self.v_cache[i].extend_from_slice(&v);
            let attn = attention(&q, &self.k_cache[i], &self.v_cache[i], self.n_past, shape);
            record(format!("blk.{i}.attn_out_before_proj"), &attn);
            x = add(&x, &matmul(&attn, &l.attn_output, n_q));
            record(format!("blk.{i}.after_attn_residual"), &x);
            let xn = rms_norm(&x, &l.ffn_norm, c.norm_eps);
            let gate = matmul(&xn, &l.ffn_gate, n_embd);
            let up = matmul(&xn, &l.ffn_up, n_embd);
            x = add(&x, &matmul(&silu_mul(&gate, &up), &l.ffn_down, n_ff));
            record(format!("blk.{i}.out"), &x);
        }
        let xn = rms_norm(&x, &self.output_norm, c.norm_eps);
        record("output_norm".into(), &xn);
        self.n_past += tokens.len();
        matmul(
            &xn,
            self.output.as_ref().unwrap_or(&self.token_embd),
            n_embd,
        )
    }
}
