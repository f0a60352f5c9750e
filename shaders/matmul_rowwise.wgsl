//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_rowwise.wgsl

// y = x W^T on CPU adapters without subgroups, for every step (prefill and decode): two sets of
// ROWS rows and TOKENS tokens per invocation, or one token (ONE_TOKEN; see
// common/matmul_rowwise.wgsl). Every lane loads each activation block itself (one scalar load per
// lane and element on a CPU adapter), so a block serves eight rows here, where the subgroup
// variant shares its loads through broadcasts. The lanes never synchronize.

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 32u;
// One token per invocation, its row blocks dequantized as they are used (common/matmul_rowwise.wgsl).
override ONE_TOKEN: bool = false;
// Gated: the weight holds n gate rows, then n up rows, and y gets silu(gate) * up. The two sets of
// an invocation's rows are then four gate rows and their up rows, for four outputs.
override GLU: bool = false;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // (n_tokens, x_stride / 4)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

// Token t's activations of block b.
fn x_block(t: u32, b: u32) -> array<vec4<f32>, 8> {
    let xb = (t * params.x_stride + b * 32u) >> 2u;
    return array<vec4<f32>, 8>(x[xb], x[xb + 1u], x[xb + 2u], x[xb + 3u], x[xb + 4u], x[xb + 5u],
        x[xb + 6u], x[xb + 7u]);
}

// Token t's sums of the two sets of rows from row0, or their gated outputs.
fn store_token(row0: u32, t: u32, a: vec4<f32>, b: vec4<f32>) {
    if (GLU) {
        store_token_glu(row0, t, a, b, ROWS);
    } else {
        store_token_rows(row0, t, a);
        store_token_rows(row0 + ROWS, t, b);
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let invocation = (wid.x + wid.z * nwg.x) * WG_SIZE + lid;
    // The first output: of eight rows, or of four gate and up pairs.
    let row0 = invocation * select(2u * ROWS, ROWS, GLU);
    let t0 = wid.y * token_tile();
    if (row0 >= n_outputs() || t0 >= matmul_rows()) {
        return;
    }
    let rows_a = select(rows_at(row0), gate_rows(row0), GLU);
    let rows_b = select(rows_at(row0 + ROWS), up_rows(row0), GLU);
    let n_chunks = params.n_in / 32u;
    if (ONE_TOKEN) {
        var one_a = vec4<f32>();
        var one_b = vec4<f32>();
        for (var b = 0u; b < n_chunks; b++) {
            let xt = block_x(x_block(t0, b));
            one_a += rows_block_dot(rows_a, b, xt);
            one_b += rows_block_dot(rows_b, b, xt);
        }
        for (var k = n_chunks * 32u; k < params.n_in; k += 4u) {
            let xv = x[(t0 * params.x_stride + k) >> 2u];
            one_a += rows_tail_dot(rows_a, k, xv);
            one_b += rows_tail_dot(rows_b, k, xv);
        }
        store_token(row0, t0, one_a, one_b);
        return;
    }
    let n_t = min(TOKENS, matmul_rows() - t0);
    var acc_a: array<vec4<f32>, TOKENS>;
    var acc_b: array<vec4<f32>, TOKENS>;
    for (var b = 0u; b < n_chunks; b++) {
        let w0 = row_block(rows_a.x, b);
        let w1 = row_block(rows_a.y, b);
        let w2 = row_block(rows_a.z, b);
        let w3 = row_block(rows_a.w, b);
        let w4 = row_block(rows_b.x, b);
        let w5 = row_block(rows_b.y, b);
        let w6 = row_block(rows_b.z, b);
        let w7 = row_block(rows_b.w, b);
        for (var t = 0u; t < n_t; t++) {
            let xt = block_x(x_block(t0 + t, b));
            acc_a[t] += vec4<f32>(row_block_dot(w0, xt), row_block_dot(w1, xt),
                row_block_dot(w2, xt), row_block_dot(w3, xt));
            acc_b[t] += vec4<f32>(row_block_dot(w4, xt), row_block_dot(w5, xt),
                row_block_dot(w6, xt), row_block_dot(w7, xt));
        }
    }
    for (var k = n_chunks * 32u; k < params.n_in; k += 4u) {
        for (var t = 0u; t < n_t; t++) {
            let xv = x[((t0 + t) * params.x_stride + k) >> 2u];
            acc_a[t] += rows_tail_dot(rows_a, k, xv);
            acc_b[t] += rows_tail_dot(rows_b, k, xv);
        }
    }
    for (var t = 0u; t < n_t; t++) {
        store_token(row0, t0 + t, acc_a[t], acc_b[t]);
    }
}
