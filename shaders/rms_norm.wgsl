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

@group(0) @binding(0) var<uniform> params: RmsNormParams;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // (n_tokens, n_embd)
@group(0) @binding(3) var<storage, read> weight: array<f32>;     // (n_embd)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (n_tokens or n_out, n_embd)

var<workgroup> partial: array<f32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y;
    let n_rows = select(step.n_tokens, step.n_out, params.gather == 1u);
    let in_row = select(row, step_out_row(row), params.gather == 1u);
    let in_range = row < n_rows;
    let x_at = in_row * params.n_embd;
    var sum = 0.0;
    if (in_range) {
        for (var k = lid; k < params.n_embd; k += WG_SIZE) {
            let v = x[x_at + k];
            sum += v * v;
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
    let out_at = row * params.n_embd;
    for (var k = lid; k < params.n_embd; k += WG_SIZE) {
        out[out_at + k] = x[x_at + k] * scale * weight[k];
    }
}
