//!include common/step.wgsl
//!include common/weights.wgsl

// Embedding lookup: copies (dequantized) rows of the token table into the activations. The table
// may be split over several buffers by rows; each dispatch covers the rows of one.

struct EmbedParams {
    // Elements per row (the embedding width).
    n_embd: u32,
    // Table row held by this buffer's first row, and how many rows it holds.
    first_row: u32,
    n_rows: u32,
    // Bytes per table row in W_DTYPE's layout.
    row_bytes: u32,
}

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> params: EmbedParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;     // (n_rows, n_embd) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // (n_tokens, n_embd)

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    if (t >= step.n_tokens) {
        return;
    }
    let token = step_token(t);
    if (token < params.first_row || token >= params.first_row + params.n_rows) {
        return;
    }
    let row_at = (token - params.first_row) * params.row_bytes;
    let out_at = t * params.n_embd;
    for (var k = lid * 4u; k < params.n_embd; k += WG_SIZE * 4u) {
        let v = weights4(row_at, k);
        out[out_at + k] = v.x;
        out[out_at + k + 1u] = v.y;
        out[out_at + k + 2u] = v.z;
        out[out_at + k + 3u] = v.w;
    }
}
