// q_head . K[row, kv_off..kv_off + head_dim] for the decode attention kernel, through the cache's
// `k_at`. Sixteen elements an iteration: their loads do not depend on each other, so they are in
// flight together instead of one memory latency after another (head_dim is a multiple of 4).

fn k4(at: u32) -> vec4<f32> {
    return vec4<f32>(f32(k_cache[at]), f32(k_cache[at + 1u]), f32(k_cache[at + 2u]),
        f32(k_cache[at + 3u]));
}

fn q4(d: u32) -> vec4<f32> {
    return vec4<f32>(q_head[d], q_head[d + 1u], q_head[d + 2u], q_head[d + 3u]);
}

fn k_dot_q(row: u32, kv_off: u32) -> f32 {
    let at = row * params.kv_stride + kv_off;
    let hd = params.head_dim;
    var s = vec4<f32>(0.0);
    var d = 0u;
    for (; d + 16u <= hd; d += 16u) {
        s += q4(d) * k4(at + d) + q4(d + 4u) * k4(at + d + 4u) + q4(d + 8u) * k4(at + d + 8u)
            + q4(d + 12u) * k4(at + d + 12u);
    }
    for (; d < hd; d += 4u) {
        s += q4(d) * k4(at + d);
    }
    return s.x + s.y + s.z + s.w;
}
