// The params, constants and bindings of the attention kernels (common/attention.wgsl for decode,
// common/attention_tiled.wgsl for prefill). The including shader declares `alias kv_t` (the
// cache's element: f32, f16, or u32 words of packed Q8_0).

struct AttentionParams {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    // Elements between rows of q and between rows (positions) of the caches: q is read from
    // the projections' q | k | v rows.
    q_stride: u32,
    kv_stride: u32,
    // Softmax scale, usually 1/sqrt(head_dim).
    scale: f32,
    // Elements between rows of out.
    out_stride: u32,
    _pad1: u32,
}

override WG_SIZE: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
// Finite stand-in for -infinity: WGSL implementations may assume finite math.
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> params: AttentionParams;
@group(0) @binding(2) var<storage, read> q: array<f32>;          // (n_tokens, q_stride)
@group(0) @binding(3) var<storage, read> k_cache: array<kv_t>;   // (pool rows, K/V row)
@group(0) @binding(4) var<storage, read> v_cache: array<kv_t>;   // (pool rows, K/V row)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (n_tokens, out_stride)
