// Stores K and V into a cache of one `kv_t` (f32 or f16) per element.

// One invocation per pair of elements of a head: a rotated pair below n_rot, two consecutive
// unrotated elements above it; then one per rotated pair of Q.
@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let half_head = params.head_dim / 2u;
    let index = gid.x;
    if (t >= step.n_tokens) {
        return;
    }
    if (index >= params.n_head_kv * half_head) {
        rotate_q_pair(t, index - params.n_head_kv * half_head);
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
    let src_k = t * params.src_stride + params.k_col0 + head * params.head_dim;
    let src_v = t * params.src_stride + params.v_col0 + head * params.head_dim;
    let dst = kv_row(step_slot(t), pos) * params.kv_stride + head * params.head_dim;
    let k0 = qkv[src_k + pair.x];
    let k1 = qkv[src_k + pair.y];
    k_cache[dst + pair.x] = kv_t(k0 * cs.x - k1 * cs.y);
    k_cache[dst + pair.y] = kv_t(k0 * cs.y + k1 * cs.x);
    v_cache[dst + pair.x] = kv_t(qkv[src_v + pair.x]);
    v_cache[dst + pair.y] = kv_t(qkv[src_v + pair.y]);
}
