//!include common/step.wgsl

// Index of the largest value in each of the step's n_out rows; ties go to the lowest index, as in
// llama.cpp.

struct ArgmaxParams {
    // Values per row.
    n: u32,
    _pad: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> params: ArgmaxParams;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // (n_out, n)
@group(0) @binding(3) var<storage, read_write> out: array<u32>;  // (n_out)

var<workgroup> best_value: array<f32, WG_SIZE>;
var<workgroup> best_index: array<u32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y;
    let in_range = row < step.n_out;
    var value = -3.0e38;
    var index = 0xffffffffu;
    if (in_range) {
        let at = row * params.n;
        for (var k = lid; k < params.n; k += WG_SIZE) {
            let v = x[at + k];
            if (v > value) {
                value = v;
                index = k;
            }
        }
    }
    best_value[lid] = value;
    best_index[lid] = index;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let v = best_value[lid + s];
            let i = best_index[lid + s];
            if (v > best_value[lid] || (v == best_value[lid] && i < best_index[lid])) {
                best_value[lid] = v;
                best_index[lid] = i;
            }
        }
        workgroupBarrier();
    }
    if (in_range && lid == 0u) {
        out[row] = best_index[0];
    }
}
