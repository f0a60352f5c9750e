//!include common/step.wgsl

// Residual add: x += y, in place on x.

struct AddParams {
    // Elements per row.
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> params: AddParams;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (n_tokens, n)
@group(0) @binding(3) var<storage, read> y: array<f32>;        // (n_tokens, n)

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    if (t >= step.n_tokens || gid.x >= params.n) {
        return;
    }
    let i = t * params.n + gid.x;
    x[i] = x[i] + y[i];
}
