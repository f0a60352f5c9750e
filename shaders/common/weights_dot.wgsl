// Dot products of whole 32-element chunks of a weight row with the activations.
//
// Needs common/weights.wgsl, and the including shader's `fn x4(at: u32) -> vec4<f32>` that reads
// four activations starting at element `at`.

// Chunk `b` of the row at byte `row_at` dotted with x[x_at + 32b ..].
fn weights_block_dot(row_at: u32, b: u32, x_at: u32) -> f32 {
    let w = weights_block(row_at, b);
    let xb = x_at + b * 32u;
    var acc = 0.0;
    for (var j = 0u; j < 8u; j++) {
        acc += dot(w[j], x4(xb + 4u * j));
    }
    return acc;
}
