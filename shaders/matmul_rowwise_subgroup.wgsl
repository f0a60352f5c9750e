enable subgroups;

//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl

// matmul_rowwise.wgsl for CPU adapters with subgroups of at least 8 lanes. On such adapters a
// storage load costs one scalar load per lane even when every lane reads the same address, so
// the activations, which all lanes share, are the bulk of the memory traffic. Here each lane
// loads one of the eight vec4s of an activation block and subgroupBroadcast hands it to the
// others: a register move instead of eight loads.
//
// subgroupBroadcast needs every lane: lanes past the last row compute a copy of it and do not
// store.

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
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row = (wid.x + wid.z * nwg.x) * WG_SIZE + lid;
    let t0 = wid.y * TOKENS;
    // The same for the whole workgroup, so no lane is left out of a broadcast.
    if (t0 >= matmul_rows()) {
        return;
    }
    let n_t = min(TOKENS, matmul_rows() - t0);
    let row_at = min(row, params.n_out - 1u) * params.row_bytes;
    let part = lane & 7u;
    let n_chunks = params.n_in / 32u;
    var acc: array<f32, TOKENS>;
    for (var b = 0u; b < n_chunks; b++) {
        let w = weights_block(row_at, b);
        for (var t = 0u; t < n_t; t++) {
            let mine = x[(((t0 + t) * params.x_stride + b * 32u) >> 2u) + part];
            var s = dot(w[0], subgroupBroadcast(mine, 0u));
            s += dot(w[1], subgroupBroadcast(mine, 1u));
            s += dot(w[2], subgroupBroadcast(mine, 2u));
            s += dot(w[3], subgroupBroadcast(mine, 3u));
            s += dot(w[4], subgroupBroadcast(mine, 4u));
            s += dot(w[5], subgroupBroadcast(mine, 5u));
            s += dot(w[6], subgroupBroadcast(mine, 6u));
            s += dot(w[7], subgroupBroadcast(mine, 7u));
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
    if (row < params.n_out) {
        for (var t = 0u; t < n_t; t++) {
            store_y((t0 + t) * params.y_stride + params.out_col0 + row, acc[t]);
        }
    }
}
