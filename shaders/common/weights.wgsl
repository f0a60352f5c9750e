// Reads weights stored in their GGUF block layout, dequantizing in registers.
//
// The including shader declares `weights: array<u32>` (the raw bytes, padded to four) and the
// override `W_DTYPE` (a GGUF type number). Q4_0 and Q8_0 blocks are 18 and 34 bytes, so their
// fields are not always four-byte aligned: reads go through byte-addressed helpers.

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_Q4_0: u32 = 2u;
const DTYPE_Q4_1: u32 = 3u;
const DTYPE_Q8_0: u32 = 8u;

// The four bytes starting at byte `at`, little-endian.
fn weights_u32_at(at: u32) -> u32 {
    let i = at >> 2u;
    let shift = (at & 3u) * 8u;
    if (shift == 0u) {
        return weights[i];
    }
    return (weights[i] >> shift) | (weights[i + 1u] << (32u - shift));
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
            return vec4<f32>(unpack2x16float(weights_u32_at(at)), unpack2x16float(weights_u32_at(at + 4u)));
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
            let d = weights_f16_at(block_at);
            let m = weights_f16_at(block_at + 2u);
            let q = (weights_u32_at(block_at + 4u + (j & 15u)) >> ((j >> 4u) * 4u)) & 0x0f0f0f0fu;
            return d * bytes_u8(q) + vec4<f32>(m);
        }
        case DTYPE_Q8_0: {
            // Block of 32: f16 scale d, 32 signed bytes. Value = d * q.
            let block_at = row_at + (k >> 5u) * 34u;
            let d = weights_f16_at(block_at);
            return d * bytes_i8(weights_u32_at(block_at + 2u + (k & 31u)));
        }
        default: {
            let at = row_at + k * 4u;
            return bitcast<vec4<f32>>(vec4<u32>(
                weights_u32_at(at),
                weights_u32_at(at + 4u),
                weights_u32_at(at + 8u),
                weights_u32_at(at + 12u),
            ));
        }
    }
}
