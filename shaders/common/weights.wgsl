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

