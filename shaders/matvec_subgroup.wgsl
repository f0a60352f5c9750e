enable subgroups;
//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/weights_dot.wgsl

// y = x W^T for few tokens (decode), one output row per subgroup: the lanes stride along the
// row and subgroupAdd reduces, with no workgroup memory or barriers. The host dispatches for the
// adapter's largest subgroup size; workgroups left without rows return at once.

override W_DTYPE: u32 = 0u;
// A multiple of the adapter's largest subgroup size.
override WG_SIZE: u32 = 128u;

// x rows start at multiples of 4 (x_stride and n_in are), so every read is one aligned vec4.
fn x4(at: u32) -> vec4<f32> {
    return x[at >> 2u];
}

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // (n_tokens, x_stride / 4)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let t = wid.y;
    let row = (wid.x + wid.z * nwg.x) * n_sg + sg_id;
    let in_range = row < params.n_out && t < matmul_rows();
    var acc = 0.0;
    if (in_range) {
        let row_at = row * params.row_bytes;
        let x_at = t * params.x_stride;
        let n_chunks = params.n_in / 32u;
        for (var b = lane; b < n_chunks; b += sg_size) {
            acc += weights_block_dot(row_at, b, x_at);
        }
        for (var k = n_chunks * 32u + lane * 4u; k < params.n_in; k += sg_size * 4u) {
            acc += dot(weights4(row_at, k), x4(x_at + k));
        }
    }
    let sum = subgroupAdd(acc);
    if (in_range && lane == 0u) {
        store_y(t * params.y_stride + params.out_col0 + row, sum);
    }
}
