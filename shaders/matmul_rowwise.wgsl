//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_rowwise.wgsl

// y = x W^T on CPU adapters, for every step (prefill and decode): ROWS rows and TOKENS tokens per
// invocation (common/matmul_rowwise.wgsl). The lanes never synchronize.

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 64u;

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
    let row0 = ((wid.x + wid.z * nwg.x) * WG_SIZE + lid) * ROWS;
    let t0 = wid.y * TOKENS;
    if (row0 >= params.n_out || t0 >= matmul_rows()) {
        return;
    }
    let n_t = min(TOKENS, matmul_rows() - t0);
    let rows = rows_at(row0);
    let n_chunks = params.n_in / 32u;
    var acc: array<vec4<f32>, TOKENS>;
    for (var b = 0u; b < n_chunks; b++) {
        let w0 = row_block(rows.x, b);
        let w1 = row_block(rows.y, b);
        let w2 = row_block(rows.z, b);
        let w3 = row_block(rows.w, b);
        for (var t = 0u; t < n_t; t++) {
            let xb = ((t0 + t) * params.x_stride + b * 32u) >> 2u;
            let xs = array<vec4<f32>, 8>(x[xb], x[xb + 1u], x[xb + 2u], x[xb + 3u], x[xb + 4u],
                x[xb + 5u], x[xb + 6u], x[xb + 7u]);
            let xt = block_x(xs);
            acc[t] += vec4<f32>(row_block_dot(w0, xt), row_block_dot(w1, xt),
                row_block_dot(w2, xt), row_block_dot(w3, xt));
        }
    }
    for (var k = n_chunks * 32u; k < params.n_in; k += 4u) {
        for (var t = 0u; t < n_t; t++) {
            acc[t] += rows_tail_dot(rows, k, x[((t0 + t) * params.x_stride + k) >> 2u]);
        }
    }
    store_rows(row0, t0, n_t, acc);
}
