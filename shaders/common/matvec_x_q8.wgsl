// How common/matvec_subgroup.wgsl reads x when it is quantized to 8-bit planes
// (quantize_q8.wgsl), for Q4_0, Q4_1 and Q8_0 weights. Needs common/weights.wgsl,
// common/q8_dot.wgsl and the including shader's `params: MatmulParams`.

@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>;  // (n_tokens, n_in / 32) blocks

alias XChunk = Q8X;

fn x_chunk(t: u32, b: u32) -> XChunk {
    return q8_x(t * (params.n_in / 32u) + b);
}

// Chunk `b` of row `row` dotted with the activation block `xs`; 0 past the last row.
fn row_chunk_dot(row: u32, b: u32, xs: XChunk) -> f32 {
    if (row >= params.n_out) {
        return 0.0;
    }
    return q8_block_dot(q8_block(row * params.row_bytes, b), xs);
}

// One lane per chunk: the 8-bit block dot scales whole blocks of x and of the weights, so it
// takes a whole activation block (common/matvec_x_f32.wgsl can spread a chunk over four).
const CHUNK_LANES: u32 = 1u;

fn x_part(t: u32, b: u32, s: u32) -> XChunk {
    return x_chunk(t, b);
}

fn row_part_dot(row: u32, b: u32, s: u32, xs: XChunk) -> f32 {
    return row_chunk_dot(row, b, xs);
}

// These weight types come in whole blocks of 32: no row has a tail.
fn row_tail_dot(row: u32, k: u32, x_at: u32) -> f32 {
    return 0.0;
}
