//! CPU references: plain f32 loops that every kernel, and the whole model, are tested against.
//! Written for clarity, not speed; shapes follow the shaders' comments.

pub mod kquant;
pub mod llama;
pub mod quant;

pub use quant::{dequantize, quantize};

use crate::kernels::KvType;
use crate::kernels::kv_store::q8_row_words;

/// `table[token]` rows: (n_tokens, n_embd).
pub fn embed(table: &[f32], n_embd: usize, tokens: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens.len() * n_embd);
    for &t in tokens {
        let at = t as usize * n_embd;
        out.extend_from_slice(&table[at..at + n_embd]);
    }
    out
}

/// Row-wise RMSNorm with a learned scale: (n_rows, n) -> (n_rows, n).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let n = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (mean_sq + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

/// RoPE settings of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Rotated dimensions per head.
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// Rotate (x[i], x[i + n_rot/2]) instead of (x[2i], x[2i+1]).
    pub neox: bool,
}

/// Rotates each head of each row in place; row r is at position `positions[r]`.
/// `x` is (n_rows, n_head * head_dim).
pub fn rope(x: &mut [f32], n_head: usize, head_dim: usize, positions: &[u32], cfg: RopeConfig) {
    let row_len = n_head * head_dim;
    let half = cfg.n_rot / 2;
    for (row, &pos) in x.chunks_exact_mut(row_len).zip(positions) {
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let theta = f64::from(cfg.freq_scale)
                    * f64::from(cfg.freq_base).powf(-2.0 * i as f64 / cfg.n_rot as f64);
                let angle = f64::from(pos) * theta;
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                let (a, b) = if cfg.neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// `x W^T`: x is (n_tokens, n_in), w is (n_out, n_in); the result (n_tokens, n_out).
pub fn matmul(x: &[f32], w: &[f32], n_in: usize) -> Vec<f32> {
    let n_out = w.len() / n_in;
    let mut out = Vec::with_capacity(x.len() / n_in * n_out);
    for xr in x.chunks_exact(n_in) {
        for wr in w.chunks_exact(n_in) {
            out.push(xr.iter().zip(wr).map(|(a, b)| a * b).sum());
        }
    }
    out
}

/// Attention shapes.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// Causal attention with grouped K/V heads. `q` is (n_tokens, n_head * head_dim) for tokens at
/// positions pos0.., the caches are (>= pos0 + n_tokens, n_head_kv * head_dim).
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    s: AttentionShape,
) -> Vec<f32> {
    let q_row = s.n_head * s.head_dim;
    let kv_row = s.n_head_kv * s.head_dim;
    let group = s.n_head / s.n_head_kv;
    let mut out = vec![0.0f32; q.len()];
    for (t, q_t) in q.chunks_exact(q_row).enumerate() {
        let n_keys = pos0 + t + 1;
        for h in 0..s.n_head {
            let kv_at = (h / group) * s.head_dim;
            let qh = &q_t[h * s.head_dim..(h + 1) * s.head_dim];
            let scores: Vec<f32> = (0..n_keys)
                .map(|j| {
                    let k = &k_cache[j * kv_row + kv_at..j * kv_row + kv_at + s.head_dim];
                    qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * s.scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let o = &mut out[t * q_row + h * s.head_dim..t * q_row + (h + 1) * s.head_dim];
            for (j, p) in exps.iter().enumerate() {
                let v = &v_cache[j * kv_row + kv_at..j * kv_row + kv_at + s.head_dim];
                for (od, vd) in o.iter_mut().zip(v) {
                    *od += p / sum * vd;
                }
            }
        }
    }
    out
}

/// Rounds every value to the nearest f16, as an f16 buffer stores it.
pub fn round_f16(x: &mut [f32]) {
    for v in x {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// A cache row of `kv_stride` elements rounded as a KV cache of `kv_type` holds it (Q8_0: each
/// block of 32 through ggml's quantizer and back).
pub fn round_kv(x: &mut [f32], kv_type: KvType) {
    match kv_type {
        KvType::F32 => {}
        KvType::F16 => round_f16(x),
        KvType::Q8_0 => {
            for block in x.chunks_exact_mut(32) {
                let q = quantize_q8_0_block(block);
                let d = half::f16::from_le_bytes([q[0], q[1]]).to_f32();
                for (v, &b) in block.iter_mut().zip(&q[2..]) {
                    *v = f32::from(b as i8) * d;
                }
            }
        }
    }
}

fn quantize_q8_0_block(block: &[f32]) -> [u8; 34] {
    let mut out = [0u8; 34];
    // quantize only fails for a partial block, and every caller passes whole ones.
    if let Ok(q) = quantize(crate::format::DType::Q8_0, block) {
        out.copy_from_slice(&q);
    }
    out
}

/// Rows of `kv_stride` elements (whole blocks of 32) in the Q8_0 KV cache layout of
/// `shaders/common/kv_q8.wgsl`: each row's packed bytes, then its f16 scales two to a word.
pub fn kv_q8_encode(x: &[f32], kv_stride: u32) -> Vec<u32> {
    let kv_stride = kv_stride as usize;
    let mut words = Vec::new();
    for row in x.chunks_exact(kv_stride) {
        let blocks: Vec<[u8; 34]> = row.chunks_exact(32).map(quantize_q8_0_block).collect();
        for b in &blocks {
            words.extend(
                b[2..]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        for pair in blocks.chunks(2) {
            let lo = u32::from(u16::from_le_bytes([pair[0][0], pair[0][1]]));
            let hi = pair
                .get(1)
                .map_or(0, |b| u32::from(u16::from_le_bytes([b[0], b[1]])));
            words.push(lo | (hi << 16));
        }
    }
    words
}

/// The values of Q8_0 cache rows (the inverse of [`kv_q8_encode`], up to its rounding).
pub fn kv_q8_decode(words: &[u32], kv_stride: u32) -> Vec<f32> {
    let row_words = q8_row_words(kv_stride) as usize;
    let quant_words = kv_stride as usize / 4;
    let mut out = Vec::with_capacity(words.len() / row_words.max(1) * kv_stride as usize);
    for row in words.chunks_exact(row_words) {
        for (i, w) in row[..quant_words].iter().enumerate() {
            let block = i / 8;
            let scale_word = row[quant_words + block / 2];
            let bits = if block % 2 == 0 {
                scale_word & 0xffff
            } else {
                scale_word >> 16
            };
            let d = half::f16::from_bits(bits as u16).to_f32();
            out.extend(w.to_le_bytes().iter().map(|&b| f32::from(b as i8) * d));
        }
    }
    out
}

/// `silu(gate) * up`, element-wise.
/// Rows of `gate | up` (each `2 n` long) from separate rows of gate and of up (`n` long), the
/// layout the gate and up projections write on the GPU.
pub fn join_rows(gate: &[f32], up: &[f32], n: usize) -> Vec<f32> {
    gate.chunks(n)
        .zip(up.chunks(n))
        .flat_map(|(g, u)| g.iter().chain(u).copied())
        .collect()
}

pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

/// `x + y`, element-wise.
pub fn add(x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}

/// Index of the largest value, the lowest index among equals.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Log-softmax of one row of logits, in f64 for a stable reference.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    logits.iter().map(|&v| v - max - log_sum).collect()
}
