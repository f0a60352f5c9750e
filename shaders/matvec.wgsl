//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/weights_dot.wgsl

// y = x W^T for few tokens (decode): each output row is one weight row dotted with x, by
// ROW_THREADS threads that take whole 32-element chunks of the row in turn and then reduce in
// workgroup memory. With ROW_THREADS = 1 (CPU adapters) a thread owns a row: every thread reads
// the same x, and no barrier is needed.

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 64u;
// Threads per output row; a power of two dividing WG_SIZE.
override ROW_THREADS: u32 = 16u;

// x rows start at multiples of 4 (x_stride and n_in are), so every read is one aligned vec4.
fn x4(at: u32) -> vec4<f32> {
    return x[at >> 2u];
}

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // (n_tokens, x_stride / 4)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

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
    let in_range = row < params.n_out && t < matmul_rows();
    var acc = 0.0;
    if (in_range) {
        let row_at = row * params.row_bytes;
        let x_at = t * params.x_stride;
        let n_chunks = params.n_in / 32u;
        for (var b = lane; b < n_chunks; b += ROW_THREADS) {
            acc += weights_block_dot(row_at, b, x_at);
        }
        // Unquantized rows need only be multiples of 4 long.
        for (var k = n_chunks * 32u + lane * 4u; k < params.n_in; k += ROW_THREADS * 4u) {
            acc += dot(weights4(row_at, k), x4(x_at + k));
        }
    }
    if (ROW_THREADS > 1u) {
        partial[lid] = acc;
        workgroupBarrier();
        for (var s = ROW_THREADS / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                partial[lid] += partial[lid + s];
            }
            workgroupBarrier();
        }
        acc = partial[lid];
    }
    if (in_range && lane == 0u) {
        store_y(t * params.y_stride + params.out_col0 + row, acc);
    }
}
