enable subgroups;

//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_rowwise.wgsl

// matmul_rowwise.wgsl for CPU adapters with subgroups: an activation block is spread over SPREAD
// lanes (8, or 4 where subgroups are that small, as on SwiftShader), each of which loads 8 / SPREAD
// of its eight vec4s, and subgroupBroadcast hands them to the others: register moves instead of
// loads, which a CPU adapter makes lane by lane.
//
// subgroupBroadcast needs every lane: lanes past the last row compute copies of it and do not
// store.

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 64u;
// Lanes an activation block is spread over: 8 or 4, at most the adapter's smallest subgroup.
override SPREAD: u32 = 8u;
// One token per invocation, its row blocks dequantized as they are used (common/matmul_rowwise.wgsl).
override ONE_TOKEN: bool = false;
// Gated: the weight holds n gate rows, then n up rows, and y gets silu(gate) * up. An invocation's
// four rows are then two gate rows and their up rows, for two outputs.
override GLU: bool = false;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // (n_tokens, x_stride / 4)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

// Token t's activations of block b, each lane loading its share and broadcasting it.
fn x_block(t: u32, b: u32, lane: u32) -> array<vec4<f32>, 8> {
    let xb = (t * params.x_stride + b * 32u) >> 2u;
    if (SPREAD == 8u) {
        let mine = x[xb + (lane & 7u)];
        return array<vec4<f32>, 8>(subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u),
            subgroupBroadcast(mine, 2u), subgroupBroadcast(mine, 3u), subgroupBroadcast(mine, 4u),
            subgroupBroadcast(mine, 5u), subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u));
    }
    let low = x[xb + (lane & 3u)];
    let high = x[xb + 4u + (lane & 3u)];
    return array<vec4<f32>, 8>(subgroupBroadcast(low, 0u), subgroupBroadcast(low, 1u),
        subgroupBroadcast(low, 2u), subgroupBroadcast(low, 3u), subgroupBroadcast(high, 0u),
        subgroupBroadcast(high, 1u), subgroupBroadcast(high, 2u), subgroupBroadcast(high, 3u));
}

// Token t's sums of the rows from row0, or their gated outputs; lanes past the last output
// store nothing.
fn store_token(row0: u32, t: u32, acc: vec4<f32>) {
    if (row0 >= n_outputs()) {
        return;
    }
    if (GLU) {
        store_token_glu(row0, t, vec4<f32>(acc.xy, 0.0, 0.0), vec4<f32>(acc.zw, 0.0, 0.0), 2u);
    } else {
        store_token_rows(row0, t, acc);
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let invocation = (wid.x + wid.z * nwg.x) * WG_SIZE + lid;
    // The first output: of four rows, or of two gate and up pairs.
    let row0 = invocation * select(ROWS, ROWS / 2u, GLU);
    let t0 = wid.y * token_tile();
    // The same for the whole workgroup, so no lane is left out of a broadcast.
    if (t0 >= matmul_rows()) {
        return;
    }
    let rows = select(rows_at(row0), vec4<u32>(gate_rows(row0).xy, up_rows(row0).xy), GLU);
    let n_chunks = params.n_in / 32u;
    if (ONE_TOKEN) {
        var one = vec4<f32>();
        for (var b = 0u; b < n_chunks; b++) {
            one += rows_block_dot(rows, b, block_x(x_block(t0, b, lane)));
        }
        for (var k = n_chunks * 32u; k < params.n_in; k += 4u) {
            one += rows_tail_dot(rows, k, x[(t0 * params.x_stride + k) >> 2u]);
        }
        store_token(row0, t0, one);
        return;
    }
    let n_t = min(TOKENS, matmul_rows() - t0);
    var acc: array<vec4<f32>, TOKENS>;
    for (var b = 0u; b < n_chunks; b++) {
        let w0 = row_block(rows.x, b);
        let w1 = row_block(rows.y, b);
        let w2 = row_block(rows.z, b);
        let w3 = row_block(rows.w, b);
        for (var t = 0u; t < n_t; t++) {
            let xt = block_x(x_block(t0 + t, b, lane));
            acc[t] += vec4<f32>(row_block_dot(w0, xt), row_block_dot(w1, xt),
                row_block_dot(w2, xt), row_block_dot(w3, xt));
        }
    }
    for (var k = n_chunks * 32u; k < params.n_in; k += 4u) {
        for (var t = 0u; t < n_t; t++) {
            acc[t] += rows_tail_dot(rows, k, x[((t0 + t) * params.x_stride + k) >> 2u]);
        }
    }
    for (var t = 0u; t < n_t; t++) {
        store_token(row0, t0 + t, acc[t]);
    }
}
