//!include common/step.wgsl
//!include common/weights.wgsl

// y = x W^T for few tokens (decode): each output row is one weight row dotted with x, by
// ROW_THREADS threads that stride along the row and then reduce in workgroup memory.

struct MatmulParams {
    // Input features: elements per weight row and per x row.
    n_in: u32,
    // Weight rows in this buffer (output features it produces).
    n_out: u32,
    // Bytes per weight row in W_DTYPE's layout.
    row_bytes: u32,
    // Output column of this buffer's first row (weights split by rows over several buffers).
    out_col0: u32,
    // Elements between consecutive rows of x and of y.
    x_stride: u32,
    y_stride: u32,
    // 1: token t's output row is step.pos0 + t (y is the KV cache), else t.
    y_rows_at_pos: u32,
    _pad: u32,
}

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 64u;
// Threads per output row; a power of two dividing WG_SIZE.
override ROW_THREADS: u32 = 16u;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<f32>;        // (n_tokens, x_stride)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (rows, y_stride)

var<workgroup> partial: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.y;
    let row = (wid.x + wid.z * nwg.x) * (WG_SIZE / ROW_THREADS) + lid / ROW_THREADS;
    let lane = lid % ROW_THREADS;
    let in_range = row < params.n_out && t < step.n_tokens;
    var acc = 0.0;
    if (in_range) {
        let row_at = row * params.row_bytes;
        let x_at = t * params.x_stride;
        for (var k = lane * 4u; k < params.n_in; k += ROW_THREADS * 4u) {
            let xv = vec4<f32>(x[x_at + k], x[x_at + k + 1u], x[x_at + k + 2u], x[x_at + k + 3u]);
            acc += dot(weights4(row_at, k), xv);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = ROW_THREADS / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (in_range && lane == 0u) {
        let y_row = select(t, step.pos0 + t, params.y_rows_at_pos == 1u);
        y[y_row * params.y_stride + params.out_col0 + row] = partial[lid];
    }
}
