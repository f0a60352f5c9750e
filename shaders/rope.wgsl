//!include common/step.wgsl
//!include common/rope.wgsl

// Rotary position embedding, in place; token t is at position step_pos(t). Normal mode rotates adjacent pairs (x[2i], x[2i+1]);
// NeoX mode rotates (x[i], x[i + n_rot/2]). Dimensions past n_rot are left alone.

struct RopeParams {
    n_head: u32,
    head_dim: u32,
    // Rotated dimensions per head (even, at most head_dim).
    n_rot: u32,
    // 1: NeoX pairing.
    neox: u32,
    freq_base: f32,
    freq_scale: f32,
    // Elements between consecutive rows of x.
    row_stride: u32,
    _pad: u32,
}

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> params: RopeParams;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (n_tokens, row_stride), heads of head_dim

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let half_rot = params.n_rot / 2u;
    let index = gid.x;
    if (t >= step.n_tokens || index >= params.n_head * half_rot) {
        return;
    }
    let head = index / half_rot;
    let i = index % half_rot;
    let pos = step_pos(t);
    let cs = rope_cos_sin(pos, i, params.n_rot, params.freq_base, params.freq_scale);
    let base = t * params.row_stride + head * params.head_dim;
    let pair = rope_pair(i, params.n_rot, params.neox == 1u);
    let a = base + pair.x;
    let b = base + pair.y;
    let c = cs.x;
    let s = cs.y;
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
