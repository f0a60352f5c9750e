//! Llama-shaped models with random weights, written as GGUF: for tests of every weight type end
//! to end, and for measuring speed against model size without downloading anything.

use super::arch::{self, arch_key, block_tensor};
use crate::format::{Array, DType, GgufWriter, Value};
use crate::kernels::KernelError;
use crate::reference::quantize;

/// Shape and types of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// At least 259: three control tokens and the 256 byte tokens come first.
    pub n_vocab: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_ctx_train: u32,
    /// Type of the block matrices.
    pub dtype: DType,
    /// Type of the token embedding (and of the output projection when untied).
    pub embd_dtype: DType,
    /// Share the token embedding as the output projection.
    pub tied: bool,
    /// A second type for attn_v, ffn_up and ffn_down, mixing types within a layer as quantized
    /// files do (Q4_K_M keeps attn_v and ffn_down in Q6_K); None: every matrix is `dtype`.
    pub mixed_dtype: Option<DType>,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            n_vocab: 512,
            n_embd: 128,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 256,
            n_ctx_train: 2048,
            dtype: DType::Q4_0,
            embd_dtype: DType::Q8_0,
            tied: false,
            mixed_dtype: None,
            seed: 1,
        }
    }
}

impl SyntheticSpec {
    /// Llama-3.2-1B: 16 layers of 2048, GQA 32/8, FFN 8192, a 128256-token vocabulary, the
    /// embedding tied to the output.
    pub fn llama_3_2_1b(dtype: DType) -> Self {
        SyntheticSpec {
            n_vocab: 128_256,
            n_embd: 2048,
            n_layer: 16,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 8192,
            n_ctx_train: 131_072,
            dtype,
            embd_dtype: dtype,
            mixed_dtype: None,
            tied: true,
            seed: 1,
        }
    }

    /// Llama-3-8B: 32 layers of 4096, GQA 32/8, FFN 14336, a 128256-token vocabulary and a
    /// separate output matrix.
    pub fn llama_3_8b(dtype: DType) -> Self {
        SyntheticSpec {
            n_vocab: 128_256,
            n_embd: 4096,
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 14_336,
            n_ctx_train: 8192,
            dtype,
            embd_dtype: dtype,
            mixed_dtype: None,
            tied: false,
            seed: 1,
        }
    }

    /// SmolLM2-135M, the test model's shape: 30 layers of 576, GQA 9/3, FFN 1536, a
    /// 49152-token vocabulary, the embedding tied to the output.
    pub fn smollm2_135m(dtype: DType) -> Self {
        SyntheticSpec {
            n_vocab: 49_152,
            n_embd: 576,
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
            n_ff: 1536,
            n_ctx_train: 8192,
            dtype,
            embd_dtype: dtype,
            mixed_dtype: None,
            tied: true,
            seed: 1,
        }
    }

    /// Parameters (elements of every tensor).
    pub fn n_params(&self) -> u64 {
        let (e, ff, v) = (
            u64::from(self.n_embd),
            u64::from(self.n_ff),
            u64::from(self.n_vocab),
        );
        let kv = u64::from(self.n_head_kv) * e / u64::from(self.n_head.max(1));
        let per_layer = 2 * e + 2 * e * e + 2 * e * kv + 3 * e * ff;
        let embd = if self.tied { v * e } else { 2 * v * e };
        embd + e + u64::from(self.n_layer) * per_layer
    }
}

/// splitmix64: small, seedable, the same on every platform.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }
}

/// A GGUF writer holding the whole model: metadata, a byte-level vocabulary and weights.
pub fn synthetic_llama(spec: &SyntheticSpec) -> Result<GgufWriter, KernelError> {
    let s = spec;
    let arch = "llama";
    let head_dim = s.n_embd / s.n_head.max(1);
    let n_kv = u64::from(s.n_head_kv * head_dim);
    let (e, ff) = (u64::from(s.n_embd), u64::from(s.n_ff));
    let mut rng = Random(s.seed);

    let byte_chars = crate::tokenizer::bytes::byte_to_char();
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    let mut types = vec![3i32; 3];
    tokens.extend(byte_chars.iter().map(|c| c.to_string()));
    types.extend(std::iter::repeat_n(1, 256));
    for i in tokens.len() as u32..s.n_vocab {
        tokens.push(format!("t{i}"));
        types.push(1);
    }
    tokens.truncate(s.n_vocab as usize);
    types.truncate(s.n_vocab as usize);

    let u32v = |v: u32| Value::U32(v);
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::String(arch.into()))
        .kv("general.name", Value::String("synthetic llama".into()))
        .kv(&arch_key(arch, "block_count"), u32v(s.n_layer))
        .kv(&arch_key(arch, "context_length"), u32v(s.n_ctx_train))
        .kv(&arch_key(arch, "embedding_length"), u32v(s.n_embd))
        .kv(&arch_key(arch, "feed_forward_length"), u32v(s.n_ff))
        .kv(&arch_key(arch, "attention.head_count"), u32v(s.n_head))
        .kv(
            &arch_key(arch, "attention.head_count_kv"),
            u32v(s.n_head_kv),
        )
        .kv(&arch_key(arch, "rope.freq_base"), Value::F32(10_000.0))
        .kv(
            &arch_key(arch, "attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        )
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String("default".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(Vec::new())),
        )
        .kv("tokenizer.ggml.bos_token_id", u32v(1))
        .kv("tokenizer.ggml.eos_token_id", u32v(2))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false));

    // Scales keep activations in a sane range through the layers, so that logits differ by
    // more than rounding and top-1 comparisons mean something.
    let mut matrix = |w: GgufWriter, name: &str, dtype: DType, rows: u64, cols: u64, scale: f32| {
        let values = rng.values((rows * cols) as usize, scale);
        // Norm weights are vectors: one row, one dimension.
        let dims: &[u64] = if rows == 1 { &[cols] } else { &[cols, rows] };
        quantize(dtype, &values).map(|bytes| w.tensor(name, dims, dtype, bytes))
    };
    let in_scale = 1.0 / (s.n_embd as f32).sqrt();
    w = matrix(
        w,
        arch::TOKEN_EMBD,
        s.embd_dtype,
        u64::from(s.n_vocab),
        e,
        1.0,
    )?;
    if !s.tied {
        w = matrix(
            w,
            arch::OUTPUT,
            s.embd_dtype,
            u64::from(s.n_vocab),
            e,
            in_scale,
        )?;
    }
    w = matrix(w, arch::OUTPUT_NORM, DType::F32, 1, e, 1.0)?;
    let mixed = s.mixed_dtype.unwrap_or(s.dtype);
    for i in 0..s.n_layer {
        let name = |n: &str| block_tensor(i, n);
        w = matrix(w, &name(arch::ATTN_NORM), DType::F32, 1, e, 1.0)?;
        w = matrix(w, &name(arch::ATTN_Q), s.dtype, e, e, in_scale * 2.0)?;
        w = matrix(w, &name(arch::ATTN_K), s.dtype, n_kv, e, in_scale * 2.0)?;
        w = matrix(w, &name(arch::ATTN_V), mixed, n_kv, e, in_scale)?;
        w = matrix(w, &name(arch::ATTN_OUTPUT), s.dtype, e, e, in_scale)?;
        w = matrix(w, &name(arch::FFN_NORM), DType::F32, 1, e, 1.0)?;
        w = matrix(w, &name(arch::FFN_GATE), s.dtype, ff, e, in_scale)?;
        w = matrix(w, &name(arch::FFN_UP), mixed, ff, e, in_scale)?;
        w = matrix(
            w,
            &name(arch::FFN_DOWN),
            mixed,
            e,
            ff,
            1.0 / (s.n_ff as f32).sqrt(),
        )?;
    }
    Ok(w)
}
