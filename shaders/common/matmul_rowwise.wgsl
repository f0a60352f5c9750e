// Shared by the rowwise products (matmul_rowwise.wgsl, matmul_rowwise_subgroup.wgsl), for CPU
// adapters: invocations are SIMD lanes, barriers are costly, and a storage load costs one scalar
// load per lane even when every lane reads the same address. An invocation owns ROWS weight rows
// and a tile of TOKENS tokens: each block of its rows is dequantized once into registers, and
// each block of activations, which all lanes share, is read once for all ROWS rows. Four rows
// took SmolLM2's decode on lavapipe from 1.4 to 3.1 tokens/s without subgroups (benches/RESULTS.md).
// Needs common/weights.wgsl and the including shader's `x` binding.

// Weight rows per invocation: the accumulators are one vec4 per token.
const ROWS: u32 = 4u;
// Tokens per invocation; sizes the accumulator array, so a const.
const TOKENS: u32 = 8u;

// A dequantized block of 32 weights dotted with 32 activations. Every index is a constant:
// compilers that do not unroll (SwiftShader's) keep a dynamically indexed private array in memory
// and address it lane by lane. The sum's order is fixed, so a row's sum does not depend on the
// kernel variant or on the other tokens of the step.
fn block_dot(w: array<vec4<f32>, 8>, xs: array<vec4<f32>, 8>) -> f32 {
    return dot(w[0], xs[0]) + dot(w[1], xs[1]) + dot(w[2], xs[2]) + dot(w[3], xs[3])
        + dot(w[4], xs[4]) + dot(w[5], xs[5]) + dot(w[6], xs[6]) + dot(w[7], xs[7]);
}

// Byte offsets of the invocation's rows from `row0`; rows past the last repeat it, so that every
// lane runs the same code (a subgroup broadcast needs them all), and are not stored.
fn rows_at(row0: u32) -> vec4<u32> {
    let last = params.n_out - 1u;
    return vec4<u32>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last),
        min(row0 + 3u, last)) * params.row_bytes;
}

// Elements k..k+3 of the four rows (unquantized rows need only be multiples of 4 long) dotted
// with activations `xv`.
fn rows_tail_dot(rows: vec4<u32>, k: u32, xv: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(weights4(rows.x, k), xv), dot(weights4(rows.y, k), xv),
        dot(weights4(rows.z, k), xv), dot(weights4(rows.w, k), xv));
}

// Stores the sums of rows row0.. for tokens t0.. that exist.
fn store_rows(row0: u32, t0: u32, n_t: u32, acc: array<vec4<f32>, TOKENS>) {
    for (var t = 0u; t < n_t; t++) {
        for (var r = 0u; r < ROWS; r++) {
            if (row0 + r < params.n_out) {
                store_y((t0 + t) * params.y_stride + params.out_col0 + row0 + r, acc[t][r]);
            }
        }
    }
}
