// Reads weights stored in their GGUF block layout, dequantizing in registers.
//
// The including shader declares `weights: array<u32>` (the raw bytes, padded to four) and the
// override `W_DTYPE` (a GGUF type number). Q4_0 and Q8_0 blocks are 18 and 34 bytes, so their
// fields are not always four-byte aligned: their reads go through byte-addressed helpers. The
// other layouts keep every field aligned (rows are multiples of 4 elements long).

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_Q4_0: u32 = 2u;
const DTYPE_Q4_1: u32 = 3u;
const DTYPE_Q8_0: u32 = 8u;

// The four bytes starting at byte `at` (any alignment), little-endian: two word loads joined by a
// branch-free funnel shift, so lanes at different alignments never diverge.
fn weights_u32_at(at: u32) -> u32 {
    let i = at >> 2u;
    return funnel(weights[i], weights[i + 1u], (at & 3u) * 8u);
}

// The four bytes starting at byte `at`, a multiple of 4.
fn weights_u32_aligned(at: u32) -> u32 {
    return weights[at >> 2u];
}

// Bytes shift/8 .. shift/8 + 3 of the eight bytes lo, hi. The second shift is split in two so
// that shift = 0 shifts hi out entirely (a single shift by 32 is undefined).
fn funnel(lo: u32, hi: u32, shift: u32) -> u32 {
    return (lo >> shift) | ((hi << 1u) << (31u - shift));
}

// The f16 at byte `at` (two-byte aligned), widened to f32.
fn weights_f16_at(at: u32) -> f32 {
    let word = weights[at >> 2u];
    return unpack2x16float(word >> ((at & 2u) * 8u)).x;
}

// Four unsigned bytes to floats.
fn bytes_u8(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 0xffu), f32((q >> 8u) & 0xffu), f32((q >> 16u) & 0xffu), f32(q >> 24u));
}

// Four signed bytes to floats.
fn bytes_i8(q: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4<u32>(q << 24u, q << 16u, q << 8u, q)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}

// Weights k..k+3 (k a multiple of 4) of the row that starts at byte `row_at`.
fn weights4(row_at: u32, k: u32) -> vec4<f32> {
    switch W_DTYPE {
        case DTYPE_F16: {
            let at = row_at + k * 2u;
            return vec4<f32>(unpack2x16float(weights_u32_aligned(at)), unpack2x16float(weights_u32_aligned(at + 4u)));
        }
        case DTYPE_Q4_0: {
            // Block of 32: f16 scale d, 16 bytes of nibbles; element j < 16 is the low nibble of
            // byte j, element j + 16 the high nibble. Value = d * (q - 8).
            let block_at = row_at + (k >> 5u) * 18u;
            let j = k & 31u;
            let d = weights_f16_at(block_at);
            let q = (weights_u32_at(block_at + 2u + (j & 15u)) >> ((j >> 4u) * 4u)) & 0x0f0f0f0fu;
            return d * (bytes_u8(q) - vec4<f32>(8.0));
        }
        case DTYPE_Q4_1: {
            // Block of 32: f16 scale d, f16 minimum m, 16 bytes of nibbles. Value = d * q + m.
            let block_at = row_at + (k >> 5u) * 20u;
            let j = k & 31u;
            let dm = unpack2x16float(weights_u32_aligned(block_at));
            let q = (weights_u32_aligned(block_at + 4u + (j & 15u)) >> ((j >> 4u) * 4u)) & 0x0f0f0f0fu;
            return dm.x * bytes_u8(q) + vec4<f32>(dm.y);
        }
        case DTYPE_Q8_0: {
            // Block of 32: f16 scale d, 32 signed bytes. Value = d * q.
            let block_at = row_at + (k >> 5u) * 34u;
            let d = weights_f16_at(block_at);
            return d * bytes_i8(weights_u32_at(block_at + 2u + (k & 31u)));
        }
        default: {
            let i = (row_at >> 2u) + k;
            return bitcast<vec4<f32>>(vec4<u32>(weights[i], weights[i + 1u], weights[i + 2u], weights[i + 3u]));
        }
    }
}


// The 32 weights of chunk `b` (elements 32b..32b+31) of the row at byte `row_at`, as 8 vec4s: a
// whole quant block per call, its scale read once and its quants with full-word loads.
fn weights_block(row_at: u32, b: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
    switch W_DTYPE {
        case DTYPE_Q4_0: {
            // 18 bytes starting at byte 0 or 2 of a word: the five words covering them are loaded
            // once and the nibbles cut out of registers. Every index is a constant: compilers
            // that do not unroll (SwiftShader's) keep a dynamically indexed private array in
            // memory and address it lane by lane.
            let block_at = row_at + b * 18u;
            let i = block_at >> 2u;
            let shift = (block_at & 3u) * 8u;
            let w = array<u32, 5>(weights[i], weights[i + 1u], weights[i + 2u], weights[i + 3u],
                weights[i + 4u]);
            let d = unpack2x16float(w[0] >> shift).x;
            // Quant byte 0 sits 2 bytes after the scale: mid-word 0, or at the start of word 1.
            let odd = shift != 0u;
            let q = vec4<u32>(
                select((w[0] >> 16u) | (w[1] << 16u), w[1], odd),
                select((w[1] >> 16u) | (w[2] << 16u), w[2], odd),
                select((w[2] >> 16u) | (w[3] << 16u), w[3], odd),
                select((w[3] >> 16u) | (w[4] << 16u), w[4], odd),
            );
            out[0] = d * (bytes_u8(q.x & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[1] = d * (bytes_u8(q.y & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[2] = d * (bytes_u8(q.z & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[3] = d * (bytes_u8(q.w & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[4] = d * (bytes_u8((q.x >> 4u) & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[5] = d * (bytes_u8((q.y >> 4u) & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[6] = d * (bytes_u8((q.z >> 4u) & 0x0f0f0f0fu) - vec4<f32>(8.0));
            out[7] = d * (bytes_u8((q.w >> 4u) & 0x0f0f0f0fu) - vec4<f32>(8.0));
        }
        case DTYPE_Q4_1: {
            let block_at = row_at + b * 20u;
            let dm = unpack2x16float(weights_u32_aligned(block_at));
            let w0 = (block_at >> 2u) + 1u;
            let q = vec4<u32>(weights[w0], weights[w0 + 1u], weights[w0 + 2u], weights[w0 + 3u]);
            // Written out with constant indices (see matmul_rowwise.wgsl).
            out[0] = dm.x * bytes_u8(q.x & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[1] = dm.x * bytes_u8(q.y & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[2] = dm.x * bytes_u8(q.z & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[3] = dm.x * bytes_u8(q.w & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[4] = dm.x * bytes_u8((q.x >> 4u) & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[5] = dm.x * bytes_u8((q.y >> 4u) & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[6] = dm.x * bytes_u8((q.z >> 4u) & 0x0f0f0f0fu) + vec4<f32>(dm.y);
            out[7] = dm.x * bytes_u8((q.w >> 4u) & 0x0f0f0f0fu) + vec4<f32>(dm.y);
        }
        case DTYPE_Q8_0: {
            // 34 bytes starting at byte 0 or 2 of a word: nine words cover them.
            let block_at = row_at + b * 34u;
            let i = block_at >> 2u;
            let shift = (block_at & 3u) * 8u;
            let w = array<u32, 9>(weights[i], weights[i + 1u], weights[i + 2u], weights[i + 3u],
                weights[i + 4u], weights[i + 5u], weights[i + 6u], weights[i + 7u], weights[i + 8u]);
            let d = unpack2x16float(w[0] >> shift).x;
            let odd = shift != 0u;
            out[0] = d * bytes_i8(select((w[0] >> 16u) | (w[1] << 16u), w[1], odd));
            out[1] = d * bytes_i8(select((w[1] >> 16u) | (w[2] << 16u), w[2], odd));
            out[2] = d * bytes_i8(select((w[2] >> 16u) | (w[3] << 16u), w[3], odd));
            out[3] = d * bytes_i8(select((w[3] >> 16u) | (w[4] << 16u), w[4], odd));
            out[4] = d * bytes_i8(select((w[4] >> 16u) | (w[5] << 16u), w[5], odd));
            out[5] = d * bytes_i8(select((w[5] >> 16u) | (w[6] << 16u), w[6], odd));
            out[6] = d * bytes_i8(select((w[6] >> 16u) | (w[7] << 16u), w[7], odd));
            out[7] = d * bytes_i8(select((w[7] >> 16u) | (w[8] << 16u), w[8], odd));
        }
        default: {
            let k = b * 32u;
            out[0] = weights4(row_at, k);
            out[1] = weights4(row_at, k + 4u);
            out[2] = weights4(row_at, k + 8u);
            out[3] = weights4(row_at, k + 12u);
            out[4] = weights4(row_at, k + 16u);
            out[5] = weights4(row_at, k + 20u);
            out[6] = weights4(row_at, k + 24u);
            out[7] = weights4(row_at, k + 28u);
        }
    }
    return out;
}
