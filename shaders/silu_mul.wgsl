//!include common/step.wgsl

// SwiGLU: out = silu(gate) * up, where the gate and up projections wrote rows of gate | up into
// one buffer.

struct SiluMulParams {
    // Elements per output row: n_ff. Rows of gate_up hold 2 n.
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> params: SiluMulParams;
@group(0) @binding(2) var<storage, read> gate_up: array<f32>;    // (n_tokens, 2 n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n_tokens, n)

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    if (t >= step.n_tokens || gid.x >= params.n) {
        return;
    }
    let at = 2u * t * params.n + gid.x;
    let g = gate_up[at];
    out[t * params.n + gid.x] = g / (1.0 + exp(-g)) * gate_up[at + params.n];
}
