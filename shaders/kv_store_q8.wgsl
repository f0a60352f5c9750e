//!include common/step.wgsl
//!include common/rope.wgsl
//!include common/kv_q8.wgsl

// Stores K (rotated) and V into a Q8_0 cache (`common/kv_q8.wgsl`), quantized as ggml quantizes
// Q8_0: per block of 32, scale = max |x| / 127 and each element rounded to the nearest step.
alias kv_t = u32;

//!include common/kv_store_io.wgsl

// Element `e` of the K row at `src` in qkv (at position `pos`), rotated.
fn rotated_k(src: u32, e: u32, pos: u32) -> f32 {
    let i = e % params.head_dim;
    if (i >= params.n_rot) {
        return qkv[src + e];
    }
    let neox = params.neox == 1u;
    let half_rot = params.n_rot / 2u;
    var pair_index = i / 2u;
    var second = (i & 1u) == 1u;
    if (neox) {
        pair_index = i % half_rot;
        second = i >= half_rot;
    }
    let pair = rope_pair(pair_index, params.n_rot, neox);
    let cs = rope_cos_sin(pos, pair_index, params.n_rot, params.freq_base, params.freq_scale);
    let head_at = src + e - i;
    let k0 = qkv[head_at + pair.x];
    let k1 = qkv[head_at + pair.y];
    // The same expressions as the f32 store, so both caches see the same rotated values.
    if (second) {
        return k0 * cs.y + k1 * cs.x;
    }
    return k0 * cs.x - k1 * cs.y;
}

// One invocation per two blocks of a row, so that each scale word has one writer; then one per
// rotated pair of Q.
@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let n_blocks = params.kv_stride / 32u;
    let n_stores = (n_blocks + 1u) / 2u;
    if (t >= step.n_tokens) {
        return;
    }
    if (gid.x >= n_stores) {
        rotate_q_pair(t, gid.x - n_stores);
        return;
    }
    let first = 2u * gid.x;
    let pos = step_pos(t);
    let src_k = t * params.src_stride + params.k_col0;
    let src_v = t * params.src_stride + params.v_col0;
    let dst = kv_row(step_slot(t), pos) * q8_row_words(params.kv_stride);
    var k_scales = vec2<f32>(0.0);
    var v_scales = vec2<f32>(0.0);
    for (var h = 0u; h < 2u; h++) {
        let block = first + h;
        if (block >= n_blocks) {
            break;
        }
        var k: array<f32, 32>;
        var k_max = 0.0;
        var v_max = 0.0;
        for (var j = 0u; j < 32u; j++) {
            let e = block * 32u + j;
            k[j] = rotated_k(src_k, e, pos);
            k_max = max(k_max, abs(k[j]));
            v_max = max(v_max, abs(qkv[src_v + e]));
        }
        let k_d = k_max / 127.0;
        let v_d = v_max / 127.0;
        let k_id = select(0.0, 1.0 / k_d, k_d != 0.0);
        let v_id = select(0.0, 1.0 / v_d, v_d != 0.0);
        for (var w = 0u; w < 8u; w++) {
            let j = 4u * w;
            let e = src_v + block * 32u + j;
            let kq = vec4<f32>(k[j], k[j + 1u], k[j + 2u], k[j + 3u]) * k_id;
            let vq = vec4<f32>(qkv[e], qkv[e + 1u], qkv[e + 2u], qkv[e + 3u]) * v_id;
            k_cache[dst + block * 8u + w] = q8_pack(kq);
            v_cache[dst + block * 8u + w] = q8_pack(vq);
        }
        k_scales[h] = k_d;
        v_scales[h] = v_d;
    }
    let scale_at = dst + params.kv_stride / 4u + gid.x;
    k_cache[scale_at] = pack2x16float(k_scales);
    v_cache[scale_at] = pack2x16float(v_scales);
}
