// Reads weights stored in their GGUF block layout, dequantizing in registers.
//
// The including shader declares `weights: array<u32>` (the raw bytes, padded to four) and the
// override `W_DTYPE` (a GGUF type number). Q4_0, Q5_0, Q8_0 and Q6_K blocks are 18, 22, 34 and
// 210 bytes, so
// their fields are not always four-byte aligned: their reads go through byte-addressed helpers.
// The other layouts keep every field aligned (rows are multiples of 4 elements long).

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_Q4_0: u32 = 2u;
const DTYPE_Q4_1: u32 = 3u;
const DTYPE_Q5_0: u32 = 6u;
const DTYPE_Q5_1: u32 = 7u;
const DTYPE_Q8_0: u32 = 8u;
const DTYPE_Q4_K: u32 = 12u;
const DTYPE_Q5_K: u32 = 13u;
const DTYPE_Q6_K: u32 = 14u;

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

// Byte `at` (any alignment).
fn weights_u8_at(at: u32) -> u32 {
    return (weights[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu;
}

// (d * scale, dmin * min) of sub-block `sub` (0..8) of the Q4_K/Q5_K super-block at byte
// `block_at` (a multiple of 4): f16 d and dmin, then 12 bytes packing eight 6-bit scales and
// mins. Sub-blocks 0..3 use the low six bits of bytes 0..7; 4..7 the nibbles of bytes 8..11 with
// their top two bits in the spare bits of bytes 0..7.
fn k4_scale_min(block_at: u32, sub: u32) -> vec2<f32> {
    let s = block_at + 4u;
    var sc: u32;
    var m: u32;
    if (sub < 4u) {
        sc = weights_u8_at(s + sub) & 63u;
        m = weights_u8_at(s + sub + 4u) & 63u;
    } else {
        let packed = weights_u8_at(s + sub + 4u);
        sc = (packed & 0x0fu) | ((weights_u8_at(s + sub - 4u) >> 6u) << 4u);
        m = (packed >> 4u) | ((weights_u8_at(s + sub) >> 6u) << 4u);
    }
    let dm = unpack2x16float(weights[block_at >> 2u]);
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(m));
}

// Scale of elements 16i..16i+15 of the Q6_K super-block at byte `block_at` (an even byte):
// d (f16 at byte 208) times the signed byte i of the scales at byte 192.
fn q6k_scale(block_at: u32, i: u32) -> f32 {
    let sc = bitcast<i32>(weights_u8_at(block_at + 192u + i) << 24u) >> 24u;
    return weights_f16_at(block_at + 208u) * f32(sc);
}

// Bits j..j+3 of a Q5 block's fifth bits `qh`, as bit 4 of four bytes.
fn fifth_bits(qh: u32, j: u32) -> u32 {
    let b = qh >> j;
    return ((b & 1u) | ((b & 2u) << 7u) | ((b & 4u) << 14u) | ((b & 8u) << 21u)) << 4u;
}

// Four unsigned bytes to floats. Converted as signed integers, which they fit: CPU adapters
// convert signed integers in one SIMD instruction and emulate the unsigned conversion.
fn bytes_u8(q: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q & 0xffu, (q >> 8u) & 0xffu,
        (q >> 16u) & 0xffu, q >> 24u)));
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
        case DTYPE_Q5_0: {
            // Block of 32 (22 bytes): f16 d, 4 bytes of fifth bits (bit j: element j), 16 bytes
            // of nibbles laid out as in Q4_0. Value = d * (q - 16).
            let block_at = row_at + (k >> 5u) * 22u;
            let j = k & 31u;
            let d = weights_f16_at(block_at);
            let low = (weights_u32_at(block_at + 6u + (j & 15u)) >> ((j >> 4u) * 4u)) & 0x0f0f0f0fu;
            let q = low | fifth_bits(weights_u32_at(block_at + 2u), j);
            return d * (bytes_u8(q) - vec4<f32>(16.0));
        }
        case DTYPE_Q5_1: {
            // Block of 32 (24 bytes, aligned): f16 d and m, fifth bits, nibbles. Value = d * q + m.
            let block_at = row_at + (k >> 5u) * 24u;
            let j = k & 31u;
            let dm = unpack2x16float(weights_u32_aligned(block_at));
            let low = (weights_u32_aligned(block_at + 8u + (j & 15u)) >> ((j >> 4u) * 4u)) & 0x0f0f0f0fu;
            let q = low | fifth_bits(weights_u32_aligned(block_at + 4u), j);
            return dm.x * bytes_u8(q) + vec4<f32>(dm.y);
        }
        case DTYPE_Q8_0: {
            // Block of 32: f16 scale d, 32 signed bytes. Value = d * q.
            let block_at = row_at + (k >> 5u) * 34u;
            let d = weights_f16_at(block_at);
            return d * bytes_i8(weights_u32_at(block_at + 2u + (k & 31u)));
        }
        case DTYPE_Q4_K: {
            // Super-block of 256 (144 bytes): d, dmin, scales, then 128 bytes of nibbles. Each 64
            // elements share 32 bytes: the first 32 are low nibbles, the next 32 high ones.
            let block_at = row_at + (k >> 8u) * 144u;
            let j = k & 255u;
            let sub = j >> 5u;
            let sm = k4_scale_min(block_at, sub);
            let q = (weights_u32_aligned(block_at + 16u + (sub >> 1u) * 32u + (j & 31u)) >> ((sub & 1u) * 4u)) & 0x0f0f0f0fu;
            return sm.x * bytes_u8(q) - vec4<f32>(sm.y);
        }
        case DTYPE_Q5_K: {
            // As Q4_K (176 bytes), with 32 bytes qh after the scales: bit `sub` of qh[l] is the
            // fifth bit of element l of sub-block `sub`.
            let block_at = row_at + (k >> 8u) * 176u;
            let j = k & 255u;
            let sub = j >> 5u;
            let sm = k4_scale_min(block_at, sub);
            let low = (weights_u32_aligned(block_at + 48u + (sub >> 1u) * 32u + (j & 31u)) >> ((sub & 1u) * 4u)) & 0x0f0f0f0fu;
            let high = ((weights_u32_aligned(block_at + 16u + (j & 31u)) >> sub) & 0x01010101u) << 4u;
            return sm.x * bytes_u8(low | high) - vec4<f32>(sm.y);
        }
        case DTYPE_Q6_K: {
            // Super-block of 256 (210 bytes, so any even alignment): ql[128], qh[64], 16 signed
            // scales, f16 d. In each half of 128, element l + 32i (l < 32) takes the low (i < 2)
            // or high nibble of ql[l + 32 (i % 2)] and bits 2i, 2i+1 of qh[l]; value
            // d * scale * (q - 32).
            let block_at = row_at + (k >> 8u) * 210u;
            let j = k & 255u;
            let part = j >> 7u;
            let i = (j >> 5u) & 3u;
            let l = j & 31u;
            let low = (weights_u32_at(block_at + part * 64u + (i & 1u) * 32u + l) >> ((i >> 1u) * 4u)) & 0x0f0f0f0fu;
            let high = ((weights_u32_at(block_at + 128u + part * 32u + l) >> (i * 2u)) & 0x03030303u) << 4u;
            return q6k_scale(block_at, j >> 4u) * (bytes_u8(low | high) - vec4<f32>(32.0));
        }
        default: {
            let i = (row_at >> 2u) + k;
            return bitcast<vec4<f32>>(vec4<u32>(weights[i], weights[i + 1u], weights[i + 2u], weights[i + 3u]));
        }
    }
}


// The scale, minimum and quant words of a Q4_0, Q4_1 or Q8_0 block, loaded with whole-word reads:
// the block's weights are d * q + m, its quants in q[0] (16 bytes) and, for Q8_0, q[1].
struct BlockWords {
    d: f32,
    m: f32,
    q: array<vec4<u32>, 2>,
}

// Word j of a block's bytes after its two-byte scale, from the block's words j and j + 1, where
// the block starts `shift` bits (0 or 16) into its first word: mid-word, or a whole word.
fn after_scale(lo: u32, hi: u32, shift: u32) -> u32 {
    return select((lo >> 16u) | (hi << 16u), hi, shift != 0u);
}

// Block b of a Q4_0 row: 18 bytes at byte 0 or 2 of a word, the five words covering them loaded
// once and the quants cut out of registers; value d * (q - 8). Every index is a constant:
// compilers that do not unroll (SwiftShader's) keep a dynamically indexed private array in
// memory and address it lane by lane.
fn q4_0_words(row_at: u32, b: u32) -> BlockWords {
    let at = row_at + b * 18u;
    let i = at >> 2u;
    let shift = (at & 3u) * 8u;
    let w = array<u32, 5>(weights[i], weights[i + 1u], weights[i + 2u], weights[i + 3u],
        weights[i + 4u]);
    let d = unpack2x16float(w[0] >> shift).x;
    let q = vec4<u32>(after_scale(w[0], w[1], shift), after_scale(w[1], w[2], shift),
        after_scale(w[2], w[3], shift), after_scale(w[3], w[4], shift));
    return BlockWords(d, -8.0 * d, array<vec4<u32>, 2>(q, vec4<u32>()));
}

// Block b of a Q4_1 row: 20 bytes, word-aligned; value d * q + m.
fn q4_1_words(row_at: u32, b: u32) -> BlockWords {
    let i = (row_at + b * 20u) >> 2u;
    let dm = unpack2x16float(weights[i]);
    let q = vec4<u32>(weights[i + 1u], weights[i + 2u], weights[i + 3u], weights[i + 4u]);
    return BlockWords(dm.x, dm.y, array<vec4<u32>, 2>(q, vec4<u32>()));
}

// Block b of a Q8_0 row: 34 bytes at byte 0 or 2 of a word, nine words covering them; value
// d * q with q signed bytes.
fn q8_0_words(row_at: u32, b: u32) -> BlockWords {
    let at = row_at + b * 34u;
    let i = at >> 2u;
    let shift = (at & 3u) * 8u;
    let w = array<u32, 9>(weights[i], weights[i + 1u], weights[i + 2u], weights[i + 3u],
        weights[i + 4u], weights[i + 5u], weights[i + 6u], weights[i + 7u], weights[i + 8u]);
    return BlockWords(unpack2x16float(w[0] >> shift).x, 0.0, array<vec4<u32>, 2>(
        vec4<u32>(after_scale(w[0], w[1], shift), after_scale(w[1], w[2], shift),
            after_scale(w[2], w[3], shift), after_scale(w[3], w[4], shift)),
        vec4<u32>(after_scale(w[4], w[5], shift), after_scale(w[5], w[6], shift),
            after_scale(w[6], w[7], shift), after_scale(w[7], w[8], shift))));
}

// The 32 weights of chunk `b` (elements 32b..32b+31) of the row at byte `row_at`, as 8 vec4s: a
// whole quant block per call, its scale read once and its quants with full-word loads.
fn weights_block(row_at: u32, b: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
    switch W_DTYPE {
        case DTYPE_Q4_0: {
            let blk = q4_0_words(row_at, b);
            let d = blk.d;
            let q = blk.q[0];
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
            let blk = q4_1_words(row_at, b);
            let q = blk.q[0];
            let m = vec4<f32>(blk.m);
            out[0] = blk.d * bytes_u8(q.x & 0x0f0f0f0fu) + m;
            out[1] = blk.d * bytes_u8(q.y & 0x0f0f0f0fu) + m;
            out[2] = blk.d * bytes_u8(q.z & 0x0f0f0f0fu) + m;
            out[3] = blk.d * bytes_u8(q.w & 0x0f0f0f0fu) + m;
            out[4] = blk.d * bytes_u8((q.x >> 4u) & 0x0f0f0f0fu) + m;
            out[5] = blk.d * bytes_u8((q.y >> 4u) & 0x0f0f0f0fu) + m;
            out[6] = blk.d * bytes_u8((q.z >> 4u) & 0x0f0f0f0fu) + m;
            out[7] = blk.d * bytes_u8((q.w >> 4u) & 0x0f0f0f0fu) + m;
        }
        case DTYPE_Q8_0: {
            let blk = q8_0_words(row_at, b);
            let d = blk.d;
            out[0] = d * bytes_i8(blk.q[0].x);
            out[1] = d * bytes_i8(blk.q[0].y);
            out[2] = d * bytes_i8(blk.q[0].z);
            out[3] = d * bytes_i8(blk.q[0].w);
            out[4] = d * bytes_i8(blk.q[1].x);
            out[5] = d * bytes_i8(blk.q[1].y);
            out[6] = d * bytes_i8(blk.q[1].z);
            out[7] = d * bytes_i8(blk.q[1].w);
        }
        case DTYPE_Q4_K: {
            // Chunk b is sub-block b % 8 of super-block b / 8: one scale and minimum, eight
            // aligned words of nibbles.
            let block_at = row_at + (b >> 3u) * 144u;
            let sub = b & 7u;
            let sm = k4_scale_min(block_at, sub);
            let w0 = (block_at + 16u + (sub >> 1u) * 32u) >> 2u;
            let shift = (sub & 1u) * 4u;
            let m = vec4<f32>(sm.y);
            out[0] = sm.x * bytes_u8((weights[w0] >> shift) & 0x0f0f0f0fu) - m;
            out[1] = sm.x * bytes_u8((weights[w0 + 1u] >> shift) & 0x0f0f0f0fu) - m;
            out[2] = sm.x * bytes_u8((weights[w0 + 2u] >> shift) & 0x0f0f0f0fu) - m;
            out[3] = sm.x * bytes_u8((weights[w0 + 3u] >> shift) & 0x0f0f0f0fu) - m;
            out[4] = sm.x * bytes_u8((weights[w0 + 4u] >> shift) & 0x0f0f0f0fu) - m;
            out[5] = sm.x * bytes_u8((weights[w0 + 5u] >> shift) & 0x0f0f0f0fu) - m;
            out[6] = sm.x * bytes_u8((weights[w0 + 6u] >> shift) & 0x0f0f0f0fu) - m;
            out[7] = sm.x * bytes_u8((weights[w0 + 7u] >> shift) & 0x0f0f0f0fu) - m;
        }
        case DTYPE_Q5_K: {
            let block_at = row_at + (b >> 3u) * 176u;
            let sub = b & 7u;
            let sm = k4_scale_min(block_at, sub);
            let w0 = (block_at + 48u + (sub >> 1u) * 32u) >> 2u;
            let h0 = (block_at + 16u) >> 2u;
            let shift = (sub & 1u) * 4u;
            let m = vec4<f32>(sm.y);
            out[0] = sm.x * bytes_u8(((weights[w0] >> shift) & 0x0f0f0f0fu) | (((weights[h0] >> sub) & 0x01010101u) << 4u)) - m;
            out[1] = sm.x * bytes_u8(((weights[w0 + 1u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 1u] >> sub) & 0x01010101u) << 4u)) - m;
            out[2] = sm.x * bytes_u8(((weights[w0 + 2u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 2u] >> sub) & 0x01010101u) << 4u)) - m;
            out[3] = sm.x * bytes_u8(((weights[w0 + 3u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 3u] >> sub) & 0x01010101u) << 4u)) - m;
            out[4] = sm.x * bytes_u8(((weights[w0 + 4u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 4u] >> sub) & 0x01010101u) << 4u)) - m;
            out[5] = sm.x * bytes_u8(((weights[w0 + 5u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 5u] >> sub) & 0x01010101u) << 4u)) - m;
            out[6] = sm.x * bytes_u8(((weights[w0 + 6u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 6u] >> sub) & 0x01010101u) << 4u)) - m;
            out[7] = sm.x * bytes_u8(((weights[w0 + 7u] >> shift) & 0x0f0f0f0fu) | (((weights[h0 + 7u] >> sub) & 0x01010101u) << 4u)) - m;
        }
        case DTYPE_Q6_K: {
            // Chunk b is elements 32i.. of half `part` of super-block b / 8; two scales (one per
            // 16 elements). Blocks start at even bytes, so the words go through the funnel.
            let block_at = row_at + (b >> 3u) * 210u;
            let part = (b >> 2u) & 1u;
            let i = b & 3u;
            let ql = block_at + part * 64u + (i & 1u) * 32u;
            let qh = block_at + 128u + part * 32u;
            let lshift = (i >> 1u) * 4u;
            let hshift = i * 2u;
            let s0 = q6k_scale(block_at, (b & 7u) * 2u);
            let s1 = q6k_scale(block_at, (b & 7u) * 2u + 1u);
            let c = vec4<f32>(32.0);
            out[0] = s0 * (bytes_u8(((weights_u32_at(ql) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh) >> hshift) & 0x03030303u) << 4u)) - c);
            out[1] = s0 * (bytes_u8(((weights_u32_at(ql + 4u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 4u) >> hshift) & 0x03030303u) << 4u)) - c);
            out[2] = s0 * (bytes_u8(((weights_u32_at(ql + 8u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 8u) >> hshift) & 0x03030303u) << 4u)) - c);
            out[3] = s0 * (bytes_u8(((weights_u32_at(ql + 12u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 12u) >> hshift) & 0x03030303u) << 4u)) - c);
            out[4] = s1 * (bytes_u8(((weights_u32_at(ql + 16u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 16u) >> hshift) & 0x03030303u) << 4u)) - c);
            out[5] = s1 * (bytes_u8(((weights_u32_at(ql + 20u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 20u) >> hshift) & 0x03030303u) << 4u)) - c);
            out[6] = s1 * (bytes_u8(((weights_u32_at(ql + 24u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 24u) >> hshift) & 0x03030303u) << 4u)) - c);
            out[7] = s1 * (bytes_u8(((weights_u32_at(ql + 28u) >> lshift) & 0x0f0f0f0fu) | (((weights_u32_at(qh + 28u) >> hshift) & 0x03030303u) << 4u)) - c);
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
