// Reads of a cache that holds one `kv_t` (f32 or f16) per element, rows kv_stride apart.

fn k_at(row: u32, col: u32) -> f32 {
    return f32(k_cache[row * params.kv_stride + col]);
}

fn v_at(row: u32, col: u32) -> f32 {
    return f32(v_cache[row * params.kv_stride + col]);
}
