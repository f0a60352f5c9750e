//!include common/step.wgsl

// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, one workgroup per row. With `gather`, output
// row i normalizes token row step_out_row(i): the rows whose logits the step needs.

struct RmsNormParams {
    n_embd: u32,
    eps: f32,
    // 1: output rows are the step's out rows (n_out of them), else all n_tokens rows.
    gather: u32,
    _pad: u32,
}

override WG_SIZE: u32 = 256u;
// vec4s each invocation keeps between the sum of squares and the scaling: rows of up to
// WG_SIZE * 4 * HELD values are read from memory once, and a fixed count lets the compiler issue
// all of an invocation's loads together instead of waiting on each in turn (a decode step's norm
// is one workgroup: its time is these loads' latency).
const HELD: u32 = 8u;

@group(0) @binding(0) var<uniform> params: RmsNormParams;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;       // (n_tokens, n_embd / 4)
@group(0) @binding(3) var<storage, read> weight: array<vec4<f32>>;  // (n_embd / 4)
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;  // (rows, n_embd / 4)

var<workgroup> partial: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y;
    let n_rows = select(step.n_tokens, step.n_out, params.gather == 1u);
    let in_row = select(row, step_out_row(row), params.gather == 1u);
    let in_range = row < n_rows;
    let n4 = params.n_embd / 4u;
    let x_at = in_row * n4;
    var held: array<vec4<f32>, HELD>;
    var sum = 0.0;
    if (in_range) {
        for (var i = 0u; i < HELD; i++) {
            let k = lid + i * WG_SIZE;
            if (k < n4) {
                held[i] = x[x_at + k];
                sum += dot(held[i], held[i]);
            }
        }
        for (var k = lid + HELD * WG_SIZE; k < n4; k += WG_SIZE) {
            let v = x[x_at + k];
            sum += dot(v, v);
        }
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (!in_range) {
        return;
    }
    let scale = inverseSqrt(partial[0] / f32(params.n_embd) + params.eps);
    let out_at = row * n4;
    for (var i = 0u; i < HELD; i++) {
        let k = lid + i * WG_SIZE;
        if (k < n4) {
            out[out_at + k] = held[i] * scale * weight[k];
        }
    }
    for (var k = lid + HELD * WG_SIZE; k < n4; k += WG_SIZE) {
        out[out_at + k] = x[x_at + k] * scale * weight[k];
    }
}
