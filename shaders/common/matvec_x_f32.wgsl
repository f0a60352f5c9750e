// How common/matvec_subgroup.wgsl reads x when it is f32 rows. Needs common/weights.wgsl and the
// including shader's `params: MatmulParams`.

@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // (n_tokens, x_stride / 4)

// A chunk of 32 activations.
alias XChunk = array<vec4<f32>, 8>;

// x rows start at multiples of 4 (x_stride and n_in are), so every read is one aligned vec4.
fn x4(at: u32) -> vec4<f32> {
    return x[at >> 2u];
}

// Chunk `b` of token row `t`.
fn x_chunk(t: u32, b: u32) -> XChunk {
    let xb = t * params.x_stride + b * 32u;
    return XChunk(x4(xb), x4(xb + 4u), x4(xb + 8u), x4(xb + 12u), x4(xb + 16u), x4(xb + 20u),
        x4(xb + 24u), x4(xb + 28u));
}

// Chunk `b` of row `row` dotted with the chunk of x in `xs`; 0 past the last row.
fn row_chunk_dot(row: u32, b: u32, xs: XChunk) -> f32 {
    if (row >= params.n_out) {
        return 0.0;
    }
    let w = weights_block(row * params.row_bytes, b);
    return dot(w[0], xs[0]) + dot(w[1], xs[1]) + dot(w[2], xs[2]) + dot(w[3], xs[3])
        + dot(w[4], xs[4]) + dot(w[5], xs[5]) + dot(w[6], xs[6]) + dot(w[7], xs[7]);
}

// Lanes per chunk of 32, 1 or 4 (no other value): with 1, each lane dots whole chunks (x as
// eight vec4s of its own); with 4, lane s of a chunk's four dots elements 4s..4s+3 and
// 16+4s..16+4s+3 (a Q4 block's quant word s, low and high nibbles). With 4, a subgroup's two
// loads of x together cover one contiguous span, and its loads of a weight row one contiguous
// run of blocks, where with 1 each lane's loads fall on a 128-byte line of their own
// (GpuFeatures::matvec_split).
override CHUNK_LANES: u32 = 1u;

// Part `s` of chunk `b` of token row `t`: the whole chunk, or with four lanes per chunk its
// elements 4s.. and 16+4s.. in the first two vec4s.
fn x_part(t: u32, b: u32, s: u32) -> XChunk {
    if (CHUNK_LANES == 1u) {
        return x_chunk(t, b);
    }
    let xb = t * params.x_stride + b * 32u + s * 4u;
    var xs: XChunk;
    xs[0] = x4(xb);
    xs[1] = x4(xb + 16u);
    return xs;
}

// Part `s` of chunk `b` of row `row` dotted with the matching part of x from x_part; 0 past the
// last row.
fn row_part_dot(row: u32, b: u32, s: u32, xs: XChunk) -> f32 {
    if (CHUNK_LANES == 1u) {
        return row_chunk_dot(row, b, xs);
    }
    if (row >= params.n_out) {
        return 0.0;
    }
    let row_at = row * params.row_bytes;
    let k = b * 32u + s * 4u;
    return dot(weights4(row_at, k), xs[0]) + dot(weights4(row_at, k + 16u), xs[1]);
}

// Elements k..k+3 of row `row` past its whole chunks, dotted with x; 0 past the last row.
fn row_tail_dot(row: u32, k: u32, x_at: u32) -> f32 {
    if (row >= params.n_out) {
        return 0.0;
    }
    return dot(weights4(row * params.row_bytes, k), x4(x_at + k));
}
