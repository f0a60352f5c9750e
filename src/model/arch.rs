//! The architecture table: canonical tensor names and the metadata keys each architecture uses.
//! Names follow GGUF (`blk.N.attn_q.weight`) so a failing test points straight at the file.

/// Architectures whose forward pass is the Llama one: RMSNorm, RoPE, grouped-query attention
/// without biases, a SwiGLU feed-forward block.
pub const LLAMA_LIKE: &[&str] = &["llama", "mistral"];

pub const TOKEN_EMBD: &str = "token_embd.weight";
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// Absent when the output projection is tied to the token embedding.
pub const OUTPUT: &str = "output.weight";

/// Per-block weights, as `blk.{i}.{name}.weight`.
pub const ATTN_NORM: &str = "attn_norm";
pub const ATTN_Q: &str = "attn_q";
pub const ATTN_K: &str = "attn_k";
pub const ATTN_V: &str = "attn_v";
pub const ATTN_OUTPUT: &str = "attn_output";
pub const FFN_NORM: &str = "ffn_norm";
pub const FFN_GATE: &str = "ffn_gate";
pub const FFN_UP: &str = "ffn_up";
pub const FFN_DOWN: &str = "ffn_down";

pub const BLOCK_TENSORS: [&str; 9] = [
    ATTN_NORM,
    ATTN_Q,
    ATTN_K,
    ATTN_V,
    ATTN_OUTPUT,
    FFN_NORM,
    FFN_GATE,
    FFN_UP,
    FFN_DOWN,
];

/// `blk.{layer}.{name}.weight`.
pub fn block_tensor(layer: u32, name: &str) -> String {
    format!("blk.{layer}.{name}.weight")
}

/// `{arch}.{key}`: architecture-scoped metadata keys.
pub fn arch_key(arch: &str, key: &str) -> String {
    format!("{arch}.{key}")
}
