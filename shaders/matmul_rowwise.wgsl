//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl

// y = x W^T for many tokens (prefill) on CPU adapters, where invocations are SIMD lanes and
// barriers are costly: an invocation owns one weight row and a tile of TOKENS tokens, so each
// block of the row is dequantized once into registers and used for all of them. The lanes read
// the same activations and never synchronize.

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 64u;
// Tokens per invocation; sizes the accumulator array, so a const.
const TOKENS: u32 = 8u;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // (n_tokens, x_stride / 4)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wid.x + wid.z * nwg.x) * WG_SIZE + lid;
    let t0 = wid.y * TOKENS;
    if (row >= params.n_out || t0 >= matmul_rows()) {
        return;
    }
    let n_t = min(TOKENS, matmul_rows() - t0);
    let row_at = row * params.row_bytes;
    let n_chunks = params.n_in / 32u;
    var acc: array<f32, TOKENS>;
    for (var b = 0u; b < n_chunks; b++) {
        let w = weights_block(row_at, b);
        for (var t = 0u; t < n_t; t++) {
            let xb = ((t0 + t) * params.x_stride + b * 32u) >> 2u;
            // Constant indices: compilers that do not unroll (SwiftShader's) keep a dynamically
            // indexed private array in memory and address it lane by lane.
            let s = dot(w[0], x[xb]) + dot(w[1], x[xb + 1u]) + dot(w[2], x[xb + 2u])
                + dot(w[3], x[xb + 3u]) + dot(w[4], x[xb + 4u]) + dot(w[5], x[xb + 5u])
                + dot(w[6], x[xb + 6u]) + dot(w[7], x[xb + 7u]);
            acc[t] += s;
        }
    }
    // Unquantized rows need only be multiples of 4 long.
    for (var k = n_chunks * 32u; k < params.n_in; k += 4u) {
        let w4 = weights4(row_at, k);
        for (var t = 0u; t < n_t; t++) {
            acc[t] += dot(w4, x[((t0 + t) * params.x_stride + k) >> 2u]);
        }
    }
    for (var t = 0u; t < n_t; t++) {
        store_y((t0 + t) * params.y_stride + params.out_col0 + row, acc[t]);
    }
}
