// Dot products of whole 32-element chunks of a weight row with the activations.
//
// Needs common/weights.wgsl, and the including shader's `fn x4(at: u32) -> vec4<f32>` that reads
// four activations starting at element `at`.

// The 32 weights of chunk `b` (elements 32b..32b+31) of the row at byte `row_at`, dotted with
// x[x_at + 32b ..]. A whole quant block per call: its scale is read once and its quants with
// full-word loads.
fn weights_block_dot(row_at: u32, b: u32, x_at: u32) -> f32 {
    let xb = x_at + b * 32u;
    switch W_DTYPE {
        case DTYPE_Q4_0: {
            // 18 bytes: the words covering them are loaded once and the nibbles cut out of
            // registers (the block starts at byte 0 or 2 of its first word).
            let block_at = row_at + b * 18u;
            let w0 = block_at >> 2u;
            let shift = (block_at & 3u) * 8u;
            var w: array<u32, 6>;
            for (var i = 0u; i < 6u; i++) {
                w[i] = weights[w0 + i];
            }
            let d = unpack2x16float(w[0] >> shift).x;
            // Quant byte 0 sits at byte 2 + shift/8 from the first word's start.
            let q_shift = (shift + 16u) & 31u;
            let q_word = (shift + 16u) >> 5u;
            var acc = 0.0;
            for (var j = 0u; j < 4u; j++) {
                let q = funnel(w[q_word + j], w[q_word + j + 1u], q_shift);
                let lo = bytes_u8(q & 0x0f0f0f0fu) - vec4<f32>(8.0);
                let hi = bytes_u8((q >> 4u) & 0x0f0f0f0fu) - vec4<f32>(8.0);
                acc += dot(lo, x4(xb + 4u * j)) + dot(hi, x4(xb + 16u + 4u * j));
            }
            return d * acc;
        }
        case DTYPE_Q4_1: {
            let block_at = row_at + b * 20u;
            let dm = unpack2x16float(weights_u32_aligned(block_at));
            var acc = 0.0;
            var sum_x = 0.0;
            for (var j = 0u; j < 16u; j += 4u) {
                let q = weights_u32_aligned(block_at + 4u + j);
                let x_lo = x4(xb + j);
                let x_hi = x4(xb + 16u + j);
                acc += dot(bytes_u8(q & 0x0f0f0f0fu), x_lo) + dot(bytes_u8((q >> 4u) & 0x0f0f0f0fu), x_hi);
                sum_x += dot(x_lo + x_hi, vec4<f32>(1.0));
            }
            return dm.x * acc + dm.y * sum_x;
        }
        case DTYPE_Q8_0: {
            // 34 bytes, starting at byte 0 or 2 of a word: ten words cover them.
            let block_at = row_at + b * 34u;
            let w0 = block_at >> 2u;
            let shift = (block_at & 3u) * 8u;
            var w: array<u32, 10>;
            for (var i = 0u; i < 10u; i++) {
                w[i] = weights[w0 + i];
            }
            let d = unpack2x16float(w[0] >> shift).x;
            let q_shift = (shift + 16u) & 31u;
            let q_word = (shift + 16u) >> 5u;
            var acc = 0.0;
            for (var j = 0u; j < 8u; j++) {
                acc += dot(bytes_i8(funnel(w[q_word + j], w[q_word + j + 1u], q_shift)), x4(xb + 4u * j));
            }
            return d * acc;
        }
        default: {
            var acc = 0.0;
            for (var j = 0u; j < 32u; j += 4u) {
                acc += dot(weights4(row_at, b * 32u + j), x4(xb + j));
            }
            return acc;
        }
    }
}
