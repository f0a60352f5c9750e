//! K-quant super-blocks (256 elements) on the CPU: Q4_K, Q5_K and Q6_K, in ggml's layouts.
//!
//! Decoding follows ggml exactly, since it is the reference the shaders are checked against.
//! Encoding fits each sub-block's scale (and minimum) from its range, a simpler fit than ggml's
//! iterative search: good enough for test weights and synthetic models, and every file it writes
//! decodes the same anywhere.

use half::f16;

/// Elements per super-block.
pub const QK_K: usize = 256;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn f16_rounded(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Scale and minimum (6 bits each) of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K or
/// Q5_K super-block: the first four pairs sit in the low six bits of bytes 0..8, the last four
/// in the nibbles of bytes 8..12 with their top two bits in the spare bits of bytes 0..8.
pub fn scale_min_k4(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of scales and mins, 128 bytes of nibbles. Each
/// 64 elements share 32 bytes: the first 32 in the low nibbles, the next 32 in the high ones.
/// Value = d * scale * q - dmin * min.
pub fn dequantize_q4_k(bytes: &[u8], out: &mut Vec<f32>) {
    for b in bytes.chunks_exact(144) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let qs = &b[16..144];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            for (half, shift) in [(0, 0), (1, 4)] {
                let (sc, m) = scale_min_k4(2 * j + half, scales);
                let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
                out.extend(
                    q.iter()
                        .map(|v| scale * f32::from((v >> shift) & 0x0f) - min),
                );
            }
        }
    }
}

/// Q5_K (176 bytes): as Q4_K with a fifth bit per element in 32 bytes `qh` (after the scales):
/// bit `s` of `qh[l]` belongs to element `l` of sub-block `s`.
pub fn dequantize_q5_k(bytes: &[u8], out: &mut Vec<f32>) {
    for b in bytes.chunks_exact(176) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            for (half, shift) in [(0, 0), (1, 4)] {
                let sub = 2 * j + half;
                let (sc, m) = scale_min_k4(sub, scales);
                let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
                out.extend(q.iter().zip(qh).map(|(v, h)| {
                    let high = ((h >> sub) & 1) << 4;
                    scale * f32::from(((v >> shift) & 0x0f) | high) - min
                }));
            }
        }
    }
}

/// Q6_K (210 bytes): 128 bytes `ql` (low four bits), 64 bytes `qh` (high two bits), 16 signed
/// byte scales (one per 16 elements), f16 d last. Each half of 128 elements uses 64 bytes of
/// `ql` and 32 of `qh`: element `l + 32i` (l < 32, i < 4) takes the low (i < 2) or high nibble of
/// `ql[l + 32 (i % 2)]` and bits 2i, 2i+1 of `qh[l]`. Value = d * scale * (q - 32).
pub fn dequantize_q6_k(bytes: &[u8], out: &mut Vec<f32>) {
    for b in bytes.chunks_exact(210) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            let scales = &b[192 + 8 * half..192 + 8 * half + 8];
            for i in 0..4 {
                out.extend((0..32).map(|l| {
                    let low = (ql[l + 32 * (i % 2)] >> (4 * (i / 2))) & 0x0f;
                    let high = (qh[l] >> (2 * i)) & 3;
                    let q = i32::from(low | (high << 4)) - 32;
                    let scale = f32::from(scales[2 * i + l / 16] as i8);
                    d * scale * q as f32
                }));
            }
        }
    }
}

/// Scale and minimum of each sub-block for Q4_K/Q5_K (`levels` = 15 or 31), both quantized to
/// six bits against the super-block's f16 `d` and `dmin`. Returns (d, dmin, scales, mins) with
/// `d` and `dmin` already rounded to f16.
fn fit_scale_min(x: &[f32], levels: f32) -> (f32, f32, [u8; 8], [u8; 8]) {
    let mut scale = [0f32; 8];
    let mut min = [0f32; 8];
    for (s, sub) in x.chunks_exact(32).enumerate() {
        // The minimum is stored as a non-negative offset: ranges always include zero.
        let lo = sub.iter().copied().fold(0.0f32, f32::min);
        let hi = sub.iter().copied().fold(lo, f32::max);
        scale[s] = (hi - lo) / levels;
        min[s] = -lo;
    }
    let max_scale = scale.iter().copied().fold(0.0f32, f32::max);
    let max_min = min.iter().copied().fold(0.0f32, f32::max);
    let d = f16_rounded(max_scale / 63.0);
    let dmin = f16_rounded(max_min / 63.0);
    // Both round up: a smaller scale would clip the sub-block's top, a smaller minimum its
    // bottom.
    let six_bits = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).ceil().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for s in 0..8 {
        ls[s] = six_bits(scale[s], d);
        lm[s] = six_bits(min[s], dmin);
    }
    (d, dmin, ls, lm)
}

/// Writes the 16-byte header of a Q4_K/Q5_K super-block (d, dmin, packed scales and mins) and
/// returns its 256 quants (0..=`max_q`) in element order.
fn fit_k4_block(block: &[f32], max_q: u8, out: &mut Vec<u8>) -> Vec<u8> {
    let (d, dmin, ls, lm) = fit_scale_min(block, f32::from(max_q));
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(dmin).to_le_bytes());
    out.extend_from_slice(&pack_scale_min_k4(&ls, &lm));
    block
        .chunks_exact(32)
        .enumerate()
        .flat_map(|(s, sub)| {
            let scale = d * f32::from(ls[s]);
            let min = dmin * f32::from(lm[s]);
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            sub.iter()
                .map(move |v| ((v + min) * inv).round().clamp(0.0, f32::from(max_q)) as u8)
        })
        .collect()
}

/// The low nibbles of 256 quants: each 64 share 32 bytes, the first 32 low, the next 32 high.
fn push_nibbles(q: &[u8], out: &mut Vec<u8>) {
    for j in 0..4 {
        for l in 0..32 {
            out.push((q[64 * j + l] & 0x0f) | ((q[64 * j + 32 + l] & 0x0f) << 4));
        }
    }
}

pub fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(QK_K) {
        let q = fit_k4_block(block, 15, out);
        push_nibbles(&q, out);
    }
}

pub fn quantize_q5_k(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(QK_K) {
        let q = fit_k4_block(block, 31, out);
        let mut qh = [0u8; 32];
        for (i, v) in q.iter().enumerate() {
            qh[i % 32] |= (v >> 4) << (i / 32);
        }
        out.extend_from_slice(&qh);
        push_nibbles(&q, out);
    }
}

pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(QK_K) {
        // One scale per 16 elements, mapping the largest magnitude to 31 (q in -32..=31).
        let scale: Vec<f32> = block
            .chunks_exact(16)
            .map(|sub| sub.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 31.0)
            .collect();
        let max_scale = scale.iter().copied().fold(0.0f32, f32::max);
        let d = f16_rounded(max_scale / 127.0);
        let ls: Vec<i8> = scale
            .iter()
            .map(|s| {
                // Rounded up, so that the largest magnitude is never clipped.
                if d > 0.0 {
                    (s / d).ceil().clamp(0.0, 127.0) as i8
                } else {
                    0
                }
            })
            .collect();
        let q: Vec<u8> = block
            .chunks_exact(16)
            .zip(&ls)
            .flat_map(|(sub, &l)| {
                let unit = d * f32::from(l);
                let inv = if unit > 0.0 { 1.0 / unit } else { 0.0 };
                sub.iter()
                    .map(move |v| ((v * inv).round().clamp(-32.0, 31.0) as i32 + 32) as u8)
            })
            .collect();
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for half in 0..2 {
            let q = &q[128 * half..128 * half + 128];
            for l in 0..32 {
                let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
                ql[64 * half + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                ql[64 * half + l + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                qh[32 * half + l] =
                    (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(ls.iter().map(|&l| l as u8));
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q4_K block built by hand: sub-block 5's scale and minimum use the split encoding.
    #[test]
    fn q4_k_decodes_as_ggml_lays_it_out() {
        let mut ls = [1u8; 8];
        let mut lm = [0u8; 8];
        ls[5] = 37; // 0b10_0101: low nibble in byte 9, top bits in byte 1
        lm[5] = 50; // 0b11_0010: high nibble of byte 9, top bits in byte 5
        let scales = pack_scale_min_k4(&ls, &lm);
        assert_eq!(scale_min_k4(5, &scales), (37, 50));
        assert_eq!(scale_min_k4(0, &scales), (1, 0));
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        b.extend_from_slice(&scales);
        let mut qs = [0u8; 128];
        // Element 160 + 3 (sub-block 5 = high nibbles of group 2, byte 64 + 3).
        qs[64 + 3] = 0x90;
        b.extend_from_slice(&qs);
        let mut y = Vec::new();
        dequantize_q4_k(&b, &mut y);
        assert_eq!(y.len(), 256);
        assert_eq!(y[163], 0.5 * 37.0 * 9.0 - 0.25 * 50.0);
        assert_eq!(y[162], -0.25 * 50.0);
        assert_eq!(y[3], 0.0);
    }

    /// Element positions of Q6_K: the top bits of element 64 + 7 are bits 4..6 of qh[7].
    #[test]
    fn q6_k_decodes_as_ggml_lays_it_out() {
        let mut b = vec![0u8; 210];
        // Every quant at 32 (value 0): low nibbles 0, high bits 2.
        for v in &mut b[128..192] {
            *v = 0b1010_1010;
        }
        b[64 + 7] = 0x50; // high nibble of ql[7] of the second half: element 128 + 64 + 7
        b[128 + 32 + 7] = 0b1011_1010; // its top bits: 3 instead of 2
        for s in &mut b[192..208] {
            *s = 2;
        }
        b[192 + 8 + 4] = (-3i8) as u8; // scale of elements 128 + 64 .. 128 + 80
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let mut y = Vec::new();
        dequantize_q6_k(&b, &mut y);
        assert_eq!(y[199], 0.5 * -3.0 * ((5 | (3 << 4)) - 32) as f32);
        assert!(y.iter().enumerate().all(|(i, &v)| i == 199 || v == 0.0));
    }
}
