// The Q8_0 KV cache layout: each row of kv_stride elements is kv_stride / 4 words of packed
// signed bytes (four per word, lowest byte first), then one f16 scale per block of 32 elements,
// two to a word. A row takes 34/32 bytes per element: about half an f16 cache. Needs the
// including shader's `k_cache`, `v_cache` (arrays of u32) and `params.kv_stride`.

fn q8_row_words(kv_stride: u32) -> u32 {
    return kv_stride / 4u + (kv_stride / 32u + 1u) / 2u;
}

// The four signed bytes of `w`, lowest first.
fn q8_unpack(w: u32) -> vec4<f32> {
    let shifted = vec4<u32>(w << 24u, w << 16u, w << 8u, w);
    return vec4<f32>(bitcast<vec4<i32>>(shifted) >> vec4<u32>(24u));
}

// Byte `i` (0..4) of `w`, sign-extended.
fn q8_byte(w: u32, i: u32) -> f32 {
    return f32(bitcast<i32>(w << (24u - 8u * i)) >> 24u);
}

// Rounds half away from zero, as ggml's Q8_0 quantizer does (WGSL's round() goes to even), and
// packs four values (already scaled to -127..127) into a word.
fn q8_pack(v: vec4<f32>) -> u32 {
    let q = vec4<i32>(sign(v) * floor(abs(v) + 0.5));
    let b = bitcast<vec4<u32>>(q) & vec4<u32>(0xffu);
    return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}

// Element `col` of row `row` of a Q8_0 cache.
fn k_at(row: u32, col: u32) -> f32 {
    let base = row * q8_row_words(params.kv_stride);
    let block = col / 32u;
    let scale = unpack2x16float(k_cache[base + params.kv_stride / 4u + block / 2u])[block % 2u];
    return q8_byte(k_cache[base + col / 4u], col % 4u) * scale;
}

fn v_at(row: u32, col: u32) -> f32 {
    let base = row * q8_row_words(params.kv_stride);
    let block = col / 32u;
    let scale = unpack2x16float(v_cache[base + params.kv_stride / 4u + block / 2u])[block % 2u];
    return q8_byte(v_cache[base + col / 4u], col % 4u) * scale;
}
