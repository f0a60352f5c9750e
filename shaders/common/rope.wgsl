// Rotary position embedding angles, shared by the kernels that rotate Q and K.

const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

// (cos, sin) of the angle of rotated pair `i` (of n_rot / 2) at position `pos`.
fn rope_cos_sin(pos: u32, i: u32, n_rot: u32, freq_base: f32, freq_scale: f32) -> vec2<f32> {
    let theta = freq_scale * pow(freq_base, -2.0 * f32(i) / f32(n_rot));
    let angle = f32(pos) * theta;
    // sin/cos are only accurate near zero on GPUs: reduce the angle mod 2*pi first, in two
    // steps so the reduction itself stays exact to f32 precision.
    let k = round(angle * INV_TWO_PI);
    let r = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
    return vec2<f32>(cos(r), sin(r));
}

// The two elements (offsets within a head) that rotated pair `i` joins: adjacent in normal mode,
// half a rotation apart in NeoX mode.
fn rope_pair(i: u32, n_rot: u32, neox: bool) -> vec2<u32> {
    if (neox) {
        return vec2<u32>(i, i + n_rot / 2u);
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}
