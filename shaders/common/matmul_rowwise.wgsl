// Shared by the rowwise products (matmul_rowwise.wgsl, matmul_rowwise_subgroup.wgsl), for CPU
// adapters: invocations are SIMD lanes, barriers are costly, and a storage load costs one scalar
// load per lane even when every lane reads the same address. An invocation owns ROWS weight rows
// and a tile of TOKENS tokens: each block of its rows is dequantized once into registers, and
// each block of activations, which all lanes share, is read once for all ROWS rows. Four rows
// took SmolLM2's decode on lavapipe from 1.4 to 3.1 tokens/s without subgroups (benches/RESULTS.md).
// Needs common/weights.wgsl, the including shader's `x` binding and its `ONE_TOKEN` override.
//
// With ONE_TOKEN set, the pipeline a one-row step (a decode step) runs, an invocation takes a
// single token, and each of its row blocks is dequantized where it meets the token's activation
// block instead of all of them first, held across the loop over the tile's tokens: far fewer
// values are live at once, which LLVM on lavapipe otherwise spills (decode's products took 14 to
// 24% less GPU time, benches/RESULTS.md). Each row's sum is the same float sum either way.

// Weight rows per invocation: the accumulators are one vec4 per token.
const ROWS: u32 = 4u;
// Tokens per invocation; sizes the accumulator array, so a const.
const TOKENS: u32 = 8u;

// Tokens an invocation takes, and a workgroup row of the grid.
fn token_tile() -> u32 {
    return select(TOKENS, 1u, ONE_TOKEN);
}

// Chunk b (32 weights) of a row as the rowwise products read it: weight 4i + c is
// d * q[i][c] * in_place_scale()[c] + m for Q4_0, Q4_1 and Q8_0, whose nibbles and bytes are
// masked in place instead of shifted down, and d * q[i][c] + m for the others. The scale d and the
// minimum m are applied once per block (d * (q . x) + m * sum(x)) instead of once per weight,
// and a masked nibble is one AND and one conversion: on CPU adapters that compute, not the
// loads, is most of a product's time.
struct RowBlock {
    q: array<vec4<f32>, 8>,
    d: f32,
    m: f32,
}

// The low nibbles of the four bytes of `w`, left in place: byte c's nibble times 256^c, exact
// in an f32 and converted as a signed integer (below 2^28).
fn nibbles_in_place(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) & vec4<u32>(0xfu, 0xf00u, 0xf0000u, 0xf000000u)));
}

// What the activations are multiplied by to undo nibbles_in_place's 256^c: powers of two, so
// each product is the same f32 as the unscaled one.
const IN_PLACE_SCALE = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);

// Q8_0's signed bytes, offset to unsigned (b + 128, so the block's minimum is -128 d) and left
// in place: byte c times 256^c for c < 3, and byte 3 shifted down to 65536 times its value so
// that it converts as a signed integer. One XOR, one AND and one conversion where sign-extending
// each byte took two shifts.
fn bytes_in_place(w: u32) -> vec4<f32> {
    let u = w ^ 0x80808080u;
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(u, u, u, u >> 8u)
        & vec4<u32>(0xffu, 0xff00u, 0xff0000u, 0xff0000u)));
}

const IN_PLACE_BYTE_SCALE = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 65536.0);

// Whether the row blocks hold quants in place, to be undone on the activations' side.
fn in_place_quants() -> bool {
    return W_DTYPE == DTYPE_Q4_0 || W_DTYPE == DTYPE_Q4_1 || W_DTYPE == DTYPE_Q8_0;
}

fn in_place_scale() -> vec4<f32> {
    return select(IN_PLACE_SCALE, IN_PLACE_BYTE_SCALE, W_DTYPE == DTYPE_Q8_0);
}

// The eight vec4s of nibbles of a 16-byte run `q`: low nibbles (elements 0..15), then high.
fn nibble_block(q: vec4<u32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(nibbles_in_place(q.x), nibbles_in_place(q.y),
        nibbles_in_place(q.z), nibbles_in_place(q.w), nibbles_in_place(q.x >> 4u),
        nibbles_in_place(q.y >> 4u), nibbles_in_place(q.z >> 4u), nibbles_in_place(q.w >> 4u));
}

fn row_block(row_at: u32, b: u32) -> RowBlock {
    switch W_DTYPE {
        case DTYPE_Q4_0: {
            let blk = q4_0_words(row_at, b);
            return RowBlock(nibble_block(blk.q[0]), blk.d, blk.m);
        }
        case DTYPE_Q4_1: {
            let blk = q4_1_words(row_at, b);
            return RowBlock(nibble_block(blk.q[0]), blk.d, blk.m);
        }
        case DTYPE_Q8_0: {
            let blk = q8_0_words(row_at, b);
            let q = array<vec4<f32>, 8>(bytes_in_place(blk.q[0].x), bytes_in_place(blk.q[0].y),
                bytes_in_place(blk.q[0].z), bytes_in_place(blk.q[0].w),
                bytes_in_place(blk.q[1].x), bytes_in_place(blk.q[1].y),
                bytes_in_place(blk.q[1].z), bytes_in_place(blk.q[1].w));
            return RowBlock(q, blk.d, -128.0 * blk.d);
        }
        default: {
            return RowBlock(weights_block(row_at, b), 1.0, 0.0);
        }
    }
}

// A token's activations for one chunk as the row blocks want them, and their sum (for m).
struct BlockX {
    xs: array<vec4<f32>, 8>,
    sum: f32,
}

fn block_x(xs: array<vec4<f32>, 8>) -> BlockX {
    if (in_place_quants()) {
        let s = in_place_scale();
        let total = ((xs[0] + xs[1]) + (xs[2] + xs[3])) + ((xs[4] + xs[5]) + (xs[6] + xs[7]));
        return BlockX(array<vec4<f32>, 8>(xs[0] * s, xs[1] * s, xs[2] * s, xs[3] * s,
            xs[4] * s, xs[5] * s, xs[6] * s, xs[7] * s), dot(total, vec4<f32>(1.0)));
    }
    return BlockX(xs, 0.0);
}

// One row's block dotted with one token's activations.
fn row_block_dot(w: RowBlock, x: BlockX) -> f32 {
    let s = block_dot(w.q, x.xs);
    if (in_place_quants()) {
        return w.d * s + w.m * x.sum;
    }
    return s;
}

// The invocation's four rows at `rows` (see rows_at), block b, dotted with one token's
// activations: each row block dequantized just before its product.
fn rows_block_dot(rows: vec4<u32>, b: u32, xt: BlockX) -> vec4<f32> {
    return vec4<f32>(row_block_dot(row_block(rows.x, b), xt), row_block_dot(row_block(rows.y, b), xt),
        row_block_dot(row_block(rows.z, b), xt), row_block_dot(row_block(rows.w, b), xt));
}

// A dequantized block of 32 weights dotted with 32 activations. Every index is a constant:
// compilers that do not unroll (SwiftShader's) keep a dynamically indexed private array in memory
// and address it lane by lane. The sum's order is fixed, so a row's sum does not depend on the
// kernel variant or on the other tokens of the step.
fn block_dot(w: array<vec4<f32>, 8>, xs: array<vec4<f32>, 8>) -> f32 {
    return dot(w[0], xs[0]) + dot(w[1], xs[1]) + dot(w[2], xs[2]) + dot(w[3], xs[3])
        + dot(w[4], xs[4]) + dot(w[5], xs[5]) + dot(w[6], xs[6]) + dot(w[7], xs[7]);
}

// Byte offsets of the four rows from `row0`; rows past `last` repeat it, so that every lane runs
// the same code (a subgroup broadcast needs them all), and are not stored.
fn rows_upto(row0: u32, last: u32) -> vec4<u32> {
    return vec4<u32>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last),
        min(row0 + 3u, last)) * params.row_bytes;
}

fn rows_at(row0: u32) -> vec4<u32> {
    return rows_upto(row0, params.n_out - 1u);
}

// Outputs the product writes: one per row, or (GLU, the including shader's override) one per
// gate row and its up row, which sit n_out / 2 rows further on.
fn n_outputs() -> u32 {
    return select(params.n_out, params.n_out / 2u, GLU);
}

// Byte offsets of gate rows o.. and of their up rows.
fn gate_rows(o: u32) -> vec4<u32> {
    return rows_upto(o, n_outputs() - 1u);
}

fn up_rows(o: u32) -> vec4<u32> {
    return rows_upto(n_outputs() + o, params.n_out - 1u);
}

// Stores token t's silu(gate) * up for outputs o.. that exist: the same expression as
// silu_mul.wgsl, so the gated product writes what the product and SiluMul wrote.
fn store_token_glu(o: u32, t: u32, gate: vec4<f32>, up: vec4<f32>, n: u32) {
    for (var r = 0u; r < n; r++) {
        if (o + r < n_outputs()) {
            let g = gate[r];
            y[t * params.y_stride + params.out_col0 + o + r] = g / (1.0 + exp(-g)) * up[r];
        }
    }
}

// Elements k..k+3 of the four rows (unquantized rows need only be multiples of 4 long) dotted
// with activations `xv`.
fn rows_tail_dot(rows: vec4<u32>, k: u32, xv: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(weights4(rows.x, k), xv), dot(weights4(rows.y, k), xv),
        dot(weights4(rows.z, k), xv), dot(weights4(rows.w, k), xv));
}

// Stores token t's sums of rows row0.. that exist.
fn store_token_rows(row0: u32, t: u32, acc: vec4<f32>) {
    for (var r = 0u; r < ROWS; r++) {
        if (row0 + r < params.n_out) {
            store_y(t * params.y_stride + params.out_col0 + row0 + r, acc[r]);
        }
    }
}
