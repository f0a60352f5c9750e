//!include common/step.wgsl

// Rotary position embedding, in place. Normal mode rotates adjacent pairs (x[2i], x[2i+1]);
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
    // 1: token t's row is at step.pos0 + t (x is the KV cache), else at t.
    rows_at_pos: u32,
}

override WG_SIZE: u32 = 64u;

const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

@group(0) @binding(0) var<uniform> params: RopeParams;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (rows, row_stride), heads of head_dim

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let half_rot = params.n_rot / 2u;
    let pair = gid.x;
    if (t >= step.n_tokens || pair >= params.n_head * half_rot) {
        return;
    }
    let head = pair / half_rot;
    let i = pair % half_rot;
    let pos = step.pos0 + t;
    let row = select(t, pos, params.rows_at_pos == 1u);
    let theta = params.freq_scale * pow(params.freq_base, -2.0 * f32(i) / f32(params.n_rot));
    let angle = f32(pos) * theta;
    // sin/cos are only accurate near zero on GPUs: reduce the angle mod 2*pi first, in two
    // steps so the reduction itself stays exact to f32 precision.
    let k = round(angle * INV_TWO_PI);
    let r = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
    let c = cos(r);
    let s = sin(r);
    let base = row * params.row_stride + head * params.head_dim;
    let a = select(base + 2u * i, base + i, params.neox == 1u);
    let b = select(a + 1u, a + half_rot, params.neox == 1u);
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
