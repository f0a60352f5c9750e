// The guarded reads that fill the tiled products' workgroup tiles (matmul.wgsl, matmul_coop.wgsl):
// zeros past the last output row, token or K. Needs common/weights.wgsl and the including
// shader's `params` and f32 `x` bindings.

// Weights k..k+3 of output row n (dequantized), or zeros.
fn tile_weights4(n: u32, k: u32) -> vec4<f32> {
    if (n < params.n_out && k < params.n_in) {
        return weights4(n * params.row_bytes, k);
    }
    return vec4<f32>(0.0);
}

// Activations k..k+3 of token t of n_tokens, or zeros.
fn tile_x4(t: u32, n_tokens: u32, k: u32) -> vec4<f32> {
    if (t < n_tokens && k < params.n_in) {
        let at = t * params.x_stride + k;
        return vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);
    }
    return vec4<f32>(0.0);
}
