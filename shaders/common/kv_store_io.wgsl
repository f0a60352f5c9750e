// The inputs and caches of the kernels that store a step's K and V rows in the paged cache, each
// at its sequence's page for its position, rotating K (RoPE) on the way.
// The including shader declares `alias kv_t` (the cache's element: f32, f16, or u32 words of
// packed Q8_0).

struct KvStoreParams {
    n_head_kv: u32,
    head_dim: u32,
    n_rot: u32,
    neox: u32,
    freq_base: f32,
    freq_scale: f32,
    // Elements per K/V row: n_head_kv * head_dim.
    kv_stride: u32,
    // Elements between a step's rows of k_new and v_new, and where K and V start in a row: the
    // projections write one buffer of q | k | v rows (k_new and v_new bind the same buffer).
    src_stride: u32,
    k_col0: u32,
    v_col0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> params: KvStoreParams;
@group(0) @binding(2) var<storage, read> k_new: array<f32>;            // (n_tokens, src_stride)
@group(0) @binding(3) var<storage, read> v_new: array<f32>;            // (n_tokens, src_stride)
@group(0) @binding(4) var<storage, read_write> k_cache: array<kv_t>;   // (pool rows, kv_stride)
@group(0) @binding(5) var<storage, read_write> v_cache: array<kv_t>;   // (pool rows, kv_stride)
