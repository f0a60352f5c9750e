//!include common/step.wgsl
//!include common/kv_q8.wgsl

// Attention over a Q8_0 KV cache (`common/kv_q8.wgsl`): a quarter of the f32 cache's reads, on
// every adapter.
alias kv_t = u32;

//!include common/attention_io.wgsl
//!include common/attention.wgsl

fn k_dot_q(row: u32, kv_off: u32) -> f32 {
    let base = row * q8_row_words(params.kv_stride);
    let scales = base + params.kv_stride / 4u;
    var s = 0.0;
    for (var b = 0u; b < params.head_dim / 32u; b++) {
        let block = kv_off / 32u + b;
        var part = 0.0;
        for (var w = 0u; w < 8u; w++) {
            let d = b * 32u + w * 4u;
            let qv = vec4<f32>(q_head[d], q_head[d + 1u], q_head[d + 2u], q_head[d + 3u]);
            part += dot(qv, q8_unpack(k_cache[base + block * 8u + w]));
        }
        s += part * unpack2x16float(k_cache[scales + block / 2u])[block % 2u];
    }
    return s;
}
