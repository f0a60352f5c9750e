//!include common/step.wgsl

// The merge pass of flash-decoding: joins the partials that attention.wgsl (and its f16 and
// q8 forms) write with SPLIT_KEYS > 0. Per (query head, token), split s left its unnormalized
// row o_s, its running max m_s and sum l_s; with M the largest m_s,
// out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M), over the splits that hold keys of the
// token (a step's context is usually far shorter than the cache the splits are laid out for).

struct AttentionMergeParams {
    n_head: u32,
    head_dim: u32,
    n_splits: u32,
    // Elements between rows of out.
    out_stride: u32,
}

override WG_SIZE: u32 = 64u;
// Keys per split, as the attention kernel's SPLIT_KEYS: splits past the token's position hold
// nothing and are not read.
override SPLIT_KEYS: u32 = 64u;
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> params: AttentionMergeParams;
@group(0) @binding(2) var<storage, read> partials: array<f32>;  // (n_tokens, n_head, n_splits, head_dim + 2)
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (n_tokens, out_stride)

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let t = wid.y;
    if (t >= step.n_tokens || head >= params.n_head) {
        return;
    }
    let hd = params.head_dim;
    let row = hd + 2u;
    let first = (t * params.n_head + head) * params.n_splits * row;
    let n_used = min(params.n_splits, step_pos(t) / SPLIT_KEYS + 1u);
    var m = NEG_BIG;
    for (var s = 0u; s < n_used; s++) {
        m = max(m, partials[first + s * row + hd]);
    }
    var l = 0.0;
    for (var s = 0u; s < n_used; s++) {
        let at = first + s * row;
        l += partials[at + hd + 1u] * exp(partials[at + hd] - m);
    }
    let out_at = t * params.out_stride + head * hd;
    for (var d = lid; d < hd; d += WG_SIZE) {
        var o = 0.0;
        for (var s = 0u; s < n_used; s++) {
            let at = first + s * row;
            o += partials[at + d] * exp(partials[at + hd] - m);
        }
        out[out_at + d] = o / l;
    }
}
