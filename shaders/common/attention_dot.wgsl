// q_head . K[row, kv_off..kv_off + head_dim] for the decode attention kernel, one element at a
// time through the cache's `k_at`.

fn k_dot_q(row: u32, kv_off: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) {
        s += q_head[d] * k_at(row, kv_off + d);
    }
    return s;
}
