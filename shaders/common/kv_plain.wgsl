// Reads of a cache that holds one `kv_t` (f32 or f16) per element, rows kv_stride apart.

fn k_dot_q(row: u32, kv_off: u32) -> f32 {
    let k_at = row * params.kv_stride + kv_off;
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) {
        s += q_head[d] * f32(k_cache[k_at + d]);
    }
    return s;
}

fn v_at(row: u32, col: u32) -> f32 {
    return f32(v_cache[row * params.kv_stride + col]);
}
