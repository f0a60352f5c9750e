//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_rowwise.wgsl
//!include common/q8_dot.wgsl

// y = x W^T on CPU adapters, against activations quantized to 8 bits (quantize_q8.wgsl): as
// matmul_rowwise.wgsl, ROWS rows and TOKENS tokens per invocation, each weight block read once
// for the tile's tokens and each activation block once for the invocation's rows, with a block's
// products in packed 4x8 integer dot products. Q4_0, Q4_1 and Q8_0 weights.

override W_DTYPE: u32 = 2u;
override WG_SIZE: u32 = 64u;
// One token per invocation, its row blocks read as they are used (common/matmul_rowwise.wgsl).
override ONE_TOKEN: bool = false;
// Never gated: Matmul::gated leaves the 8-bit products out.
const GLU: bool = false;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>;  // (n_tokens, n_in / 32) blocks
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = ((wid.x + wid.z * nwg.x) * WG_SIZE + lid) * ROWS;
    let t0 = wid.y * token_tile();
    if (row0 >= params.n_out || t0 >= matmul_rows()) {
        return;
    }
    let rows = rows_at(row0);
    let n_blocks = params.n_in / 32u;
    if (ONE_TOKEN) {
        var one = vec4<f32>();
        for (var b = 0u; b < n_blocks; b++) {
            let xt = q8_x(t0 * n_blocks + b);
            one += vec4<f32>(q8_block_dot(q8_block(rows.x, b), xt),
                q8_block_dot(q8_block(rows.y, b), xt), q8_block_dot(q8_block(rows.z, b), xt),
                q8_block_dot(q8_block(rows.w, b), xt));
        }
        store_token_rows(row0, t0, one);
        return;
    }
    let n_t = min(TOKENS, matmul_rows() - t0);
    var acc: array<vec4<f32>, TOKENS>;
    for (var b = 0u; b < n_blocks; b++) {
        let w0 = q8_block(rows.x, b);
        let w1 = q8_block(rows.y, b);
        let w2 = q8_block(rows.z, b);
        let w3 = q8_block(rows.w, b);
        for (var t = 0u; t < n_t; t++) {
            let xt = q8_x((t0 + t) * n_blocks + b);
            acc[t] += vec4<f32>(q8_block_dot(w0, xt), q8_block_dot(w1, xt), q8_block_dot(w2, xt),
                q8_block_dot(w3, xt));
        }
    }
    for (var t = 0u; t < n_t; t++) {
        store_token_rows(row0, t0 + t, acc[t]);
    }
}
