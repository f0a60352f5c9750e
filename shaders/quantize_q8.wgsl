//!include common/step.wgsl

// Activations as two planes of 8-bit integers in blocks of 32, for the products that multiply
// them with packed 4x8 integer dot products (common/q8_dot.wgsl): x ~ d * q + (d / 254) * r, q
// the block scaled to +-127 and rounded, r what that rounding left, scaled and rounded again.
// One plane alone (as llama.cpp's CPU backend does) moved SmolLM2's perplexity by 8% and its
// greedy text: its blocks hold outliers that leave the other values a few levels. Two planes
// leave an error under max|x| / 64516 per value, below an f16's rounding. Per block: q in eight
// words, r in eight, then d, d / 254 and the block's exact sum (for a weight block's minimum,
// which multiplies every activation). One invocation per block: no barriers.

struct QuantizeParams {
    // Elements per row (a multiple of 32) and between rows of x.
    n_in: u32,
    x_stride: u32,
    // 1: the rows are the step's output rows, else its tokens (as MatmulParams.out_rows).
    out_rows: u32,
    _pad: u32,
}

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> params: QuantizeParams;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;         // (rows, x_stride / 4)
// (rows, n_in / 32) blocks of five vec4s: q's bytes 0..15 and 16..31, r's, then
// (d, d / 254, sum, 0) as bits.
@group(0) @binding(3) var<storage, read_write> xq: array<vec4<u32>>;

fn quantize_rows() -> u32 {
    return select(step.n_tokens, step.n_out, params.out_rows == 1u);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n_blocks = params.n_in / 32u;
    let b = gid.x + wid.z * nwg.x * WG_SIZE;
    let t = wid.y;
    if (b >= n_blocks || t >= quantize_rows()) {
        return;
    }
    let at = (t * params.x_stride + b * 32u) >> 2u;
    let v = array<vec4<f32>, 8>(x[at], x[at + 1u], x[at + 2u], x[at + 3u], x[at + 4u],
        x[at + 5u], x[at + 6u], x[at + 7u]);
    let m = max(max(max(abs(v[0]), abs(v[1])), max(abs(v[2]), abs(v[3]))),
        max(max(abs(v[4]), abs(v[5])), max(abs(v[6]), abs(v[7]))));
    let d = max(max(m.x, m.y), max(m.z, m.w)) / 127.0;
    let d2 = d / 254.0;
    // An all-zero block keeps d = 0 and zero bytes.
    let inv = select(0.0, 1.0 / d, d > 0.0);
    let inv2 = select(0.0, 1.0 / d2, d2 > 0.0);
    let total = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    var q: array<u32, 8>;
    var r: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) {
        let qi = round(v[i] * inv);
        q[i] = pack4xI8(vec4<i32>(qi));
        // |v - d q| <= d / 2, so the residual scales to at most 127 but for rounding.
        r[i] = pack4xI8Clamp(vec4<i32>(round((v[i] - qi * d) * inv2)));
    }
    let out = (t * n_blocks + b) * 5u;
    xq[out] = vec4<u32>(q[0], q[1], q[2], q[3]);
    xq[out + 1u] = vec4<u32>(q[4], q[5], q[6], q[7]);
    xq[out + 2u] = vec4<u32>(r[0], r[1], r[2], r[3]);
    xq[out + 3u] = vec4<u32>(r[4], r[5], r[6], r[7]);
    xq[out + 4u] = vec4<u32>(bitcast<u32>(d), bitcast<u32>(d2),
        bitcast<u32>(dot(total, vec4<f32>(1.0))), 0u);
}
