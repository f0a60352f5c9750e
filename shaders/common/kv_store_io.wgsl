// The inputs and caches of the kernels that store a step's K and V rows in the paged cache, each
// at its sequence's page for its position, rotating K (RoPE) on the way. The same dispatch
// rotates the step's Q in place, so RoPE takes no pass of its own.
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
    // Elements between a step's rows of qkv, and where K and V start in a row: the projections
    // write one buffer of q | k | v rows, Q from column 0.
    src_stride: u32,
    k_col0: u32,
    v_col0: u32,
    // Q heads of head_dim, rotated in place.
    n_head: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> params: KvStoreParams;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;       // (n_tokens, src_stride)
@group(0) @binding(3) var<storage, read_write> k_cache: array<kv_t>;  // (pool rows, kv_stride)
@group(0) @binding(4) var<storage, read_write> v_cache: array<kv_t>;  // (pool rows, kv_stride)

// Rotates pair `index` (of n_head * n_rot / 2) of token t's Q in place. An invocation past the
// last pair does nothing.
fn rotate_q_pair(t: u32, index: u32) {
    let half_rot = params.n_rot / 2u;
    if (index >= params.n_head * half_rot) {
        return;
    }
    let i = index % half_rot;
    let cs = rope_cos_sin(step_pos(t), i, params.n_rot, params.freq_base, params.freq_scale);
    let pair = rope_pair(i, params.n_rot, params.neox == 1u);
    let base = t * params.src_stride + (index / half_rot) * params.head_dim;
    let x0 = qkv[base + pair.x];
    let x1 = qkv[base + pair.y];
    qkv[base + pair.x] = x0 * cs.x - x1 * cs.y;
    qkv[base + pair.y] = x0 * cs.y + x1 * cs.x;
}
