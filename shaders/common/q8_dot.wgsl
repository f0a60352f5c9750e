// Weight blocks against activations quantized to two planes of 8 bits (quantize_q8.wgsl),
// multiplied with packed 4x8 integer dot products: a block's 32 weights as signed bytes in eight
// words, dotted with each plane's bytes four at a time, then scaled once per block. Q4_0 and Q4_1 nibbles
// need only a mask to become bytes (0..15), Q8_0 bytes are already there; no weight is converted
// to a float. For Q4_0, Q4_1 and Q8_0. Needs common/weights.wgsl and the
// including shader's `xq: array<vec4<u32>>` binding.

// A weight block as bytes: q[0] holds weights 0..15, q[1] weights 16..31, four to a word; the
// block's weights are d * q + m.
struct Q8Block {
    q: array<vec4<u32>, 2>,
    d: f32,
    m: f32,
}

// One token's activation block (quantize_q8.wgsl): x ~ d * q + d2 * r, q and r as Q8Block.q,
// and the exact sum.
struct Q8X {
    q: array<vec4<u32>, 2>,
    r: array<vec4<u32>, 2>,
    d: f32,
    d2: f32,
    sum: f32,
}

// Block b of the row at byte `row_at`.
fn q8_block(row_at: u32, b: u32) -> Q8Block {
    switch W_DTYPE {
        case DTYPE_Q4_0: {
            let blk = q4_0_words(row_at, b);
            return Q8Block(nibble_bytes(blk.q[0]), blk.d, blk.m);
        }
        case DTYPE_Q4_1: {
            let blk = q4_1_words(row_at, b);
            return Q8Block(nibble_bytes(blk.q[0]), blk.d, blk.m);
        }
        default: {
            let blk = q8_0_words(row_at, b);
            return Q8Block(blk.q, blk.d, 0.0);
        }
    }
}

// The 16 bytes of a nibble block as 32 bytes: the low nibbles (weights 0..15), then the high.
fn nibble_bytes(q: vec4<u32>) -> array<vec4<u32>, 2> {
    let mask = vec4<u32>(0x0f0f0f0fu);
    return array<vec4<u32>, 2>(q & mask, (q >> vec4<u32>(4u)) & mask);
}

// Activation block `block` (its index among all the row's blocks, counted from xq's start).
fn q8_x(block: u32) -> Q8X {
    let at = block * 5u;
    let ds = bitcast<vec4<f32>>(xq[at + 4u]);
    return Q8X(array<vec4<u32>, 2>(xq[at], xq[at + 1u]),
        array<vec4<u32>, 2>(xq[at + 2u], xq[at + 3u]), ds.x, ds.y, ds.z);
}

fn dot4_block(a: array<vec4<u32>, 2>, b: array<vec4<u32>, 2>) -> i32 {
    return ((dot4I8Packed(a[0].x, b[0].x) + dot4I8Packed(a[0].y, b[0].y))
        + (dot4I8Packed(a[0].z, b[0].z) + dot4I8Packed(a[0].w, b[0].w)))
        + ((dot4I8Packed(a[1].x, b[1].x) + dot4I8Packed(a[1].y, b[1].y))
        + (dot4I8Packed(a[1].z, b[1].z) + dot4I8Packed(a[1].w, b[1].w)));
}

// One weight block dotted with one token's activation block.
fn q8_block_dot(w: Q8Block, x: Q8X) -> f32 {
    return w.d * (x.d * f32(dot4_block(w.q, x.q)) + x.d2 * f32(dot4_block(w.q, x.r)))
        + w.m * x.sum;
}
