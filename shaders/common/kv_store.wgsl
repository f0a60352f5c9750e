// Stores a step's K and V rows in the paged cache, each at its sequence's page for its position,
// rotating K (RoPE) on the way.
// The including shader declares `alias kv_t` (f32, or f16 where the adapter has shader-f16).

struct KvStoreParams {
    n_head_kv: u32,
    head_dim: u32,
    n_rot: u32,
    neox: u32,
    freq_base: f32,
    freq_scale: f32,
    // Elements per K/V row: n_head_kv * head_dim.
    kv_stride: u32,
    _pad: u32,
}

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> params: KvStoreParams;
@group(0) @binding(2) var<storage, read> k_new: array<f32>;            // (n_tokens, kv_stride)
@group(0) @binding(3) var<storage, read> v_new: array<f32>;            // (n_tokens, kv_stride)
@group(0) @binding(4) var<storage, read_write> k_cache: array<kv_t>;   // (pool rows, kv_stride)
@group(0) @binding(5) var<storage, read_write> v_cache: array<kv_t>;   // (pool rows, kv_stride)

// One invocation per pair of elements of a head: a rotated pair below n_rot, two consecutive
// unrotated elements above it.
@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let half_head = params.head_dim / 2u;
    let index = gid.x;
    if (t >= step.n_tokens || index >= params.n_head_kv * half_head) {
        return;
    }
    let head = index / half_head;
    let i = index % half_head;
    let pos = step_pos(t);
    let half_rot = params.n_rot / 2u;
    var pair = vec2<u32>(params.n_rot + 2u * (i - half_rot), params.n_rot + 2u * (i - half_rot) + 1u);
    var cs = vec2<f32>(1.0, 0.0);
    if (i < half_rot) {
        pair = rope_pair(i, params.n_rot, params.neox == 1u);
        cs = rope_cos_sin(pos, i, params.n_rot, params.freq_base, params.freq_scale);
    }
    let src = t * params.kv_stride + head * params.head_dim;
    let dst = kv_row(step_slot(t), pos) * params.kv_stride + head * params.head_dim;
    let k0 = k_new[src + pair.x];
    let k1 = k_new[src + pair.y];
    k_cache[dst + pair.x] = kv_t(k0 * cs.x - k1 * cs.y);
    k_cache[dst + pair.y] = kv_t(k0 * cs.y + k1 * cs.x);
    v_cache[dst + pair.x] = kv_t(v_new[src + pair.x]);
    v_cache[dst + pair.y] = kv_t(v_new[src + pair.y]);
}
