//! Block formats on the CPU: dequantization (the reference the shaders are checked against) and
//! quantization with ggml's reference rounding (to make test weights and synthetic models).

use half::{bf16, f16};

use crate::format::DType;
use crate::kernels::KernelError;
use crate::reference::kquant;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decodes `n` elements of `dtype` from `bytes`.
pub fn dequantize(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>, KernelError> {
    let unsupported = || KernelError::UnsupportedDType {
        op: "dequantize",
        dtype,
    };
    let needed = dtype.bytes_for(n as u64).ok_or_else(unsupported)? as usize;
    if bytes.len() < needed {
        return Err(crate::kernels::shape_error(
            "dequantize",
            format!(
                "{n} {dtype} values need {needed} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    let bytes = &bytes[..needed];
    let mut out = Vec::with_capacity(n);
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        DType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            // Q5_0: f16 d, 4 bytes of fifth bits, 16 bytes of nibbles; value d * (q - 16).
            // Q5_1: f16 d and m first; value d * q + m. Element j < 16 is the low nibble of
            // byte j, j + 16 the high one; bit j of the fifth bits belongs to element j.
            let (size, at) = if dtype == DType::Q5_0 {
                (22, 2)
            } else {
                (24, 4)
            };
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                let m = if dtype == DType::Q5_0 {
                    -16.0 * d
                } else {
                    f16_at(b, 2)
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                let q = |j: usize| {
                    let nibble = if j < 16 {
                        qs[j] & 0x0f
                    } else {
                        qs[j - 16] >> 4
                    };
                    f32::from(nibble) + (((qh >> j) & 1) * 16) as f32
                };
                out.extend((0..32).map(|j| d * q(j) + m));
            }
        }
        DType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        DType::Q4_K => kquant::dequantize_q4_k(bytes, &mut out),
        DType::Q5_K => kquant::dequantize_q5_k(bytes, &mut out),
        DType::Q6_K => kquant::dequantize_q6_k(bytes, &mut out),
        _ => return Err(unsupported()),
    }
    Ok(out)
}

/// One block of 32 activations as `shaders/quantize_q8.wgsl` writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Activations {
    /// x scaled to +-127 by 1 / d and rounded.
    pub q: [i8; 32],
    /// What that rounding left, scaled by 1 / d2 and rounded.
    pub r: [i8; 32],
    pub d: f32,
    /// d / 254.
    pub d2: f32,
    /// The exact sum, in the shader's order.
    pub sum: f32,
}

/// Quantizes 32 activations as the shader does: x ~ d q + d2 r with d = max|x| / 127, rounding
/// to nearest, ties to even (WGSL's `round`).
pub fn quantize_q8_block(x: &[f32]) -> Q8Activations {
    let amax = x.iter().take(32).fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let d2 = d / 254.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let inv2 = if d2 > 0.0 { 1.0 / d2 } else { 0.0 };
    let (mut q, mut r) = ([0i8; 32], [0i8; 32]);
    for (j, v) in x.iter().take(32).enumerate() {
        let qj = (v * inv).round_ties_even();
        q[j] = qj as i8;
        r[j] = ((v - qj * d) * inv2).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    // Eight vec4s added pairwise, then the four lanes.
    let v = |i: usize, c: usize| x[4 * i + c];
    let lane = |c: usize| {
        ((v(0, c) + v(1, c)) + (v(2, c) + v(3, c))) + ((v(4, c) + v(5, c)) + (v(6, c) + v(7, c)))
    };
    Q8Activations {
        q,
        r,
        d,
        d2,
        sum: ((lane(0) + lane(1)) + lane(2)) + lane(3),
    }
}

/// The blocks of a Q4_0, Q4_1 or Q8_0 row as `shaders/common/q8_dot.wgsl` reads them: each as
/// 32 integers q, a scale d and a minimum m, its weights being d * q + m.
pub fn q8_weight_blocks(
    dtype: DType,
    bytes: &[u8],
) -> Result<Vec<([i8; 32], f32, f32)>, KernelError> {
    let mut out = Vec::new();
    match dtype {
        DType::Q4_0 | DType::Q4_1 => {
            let (size, at) = if dtype == DType::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                let m = if dtype == DType::Q4_0 {
                    -8.0 * d
                } else {
                    f16_at(b, 2)
                };
                let mut q = [0i8; 32];
                for (j, byte) in b[at..at + 16].iter().enumerate() {
                    q[j] = (byte & 0x0f) as i8;
                    q[j + 16] = (byte >> 4) as i8;
                }
                out.push((q, d, m));
            }
        }
        DType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let mut q = [0i8; 32];
                for (q, &byte) in q.iter_mut().zip(&b[2..34]) {
                    *q = byte as i8;
                }
                out.push((q, f16_at(b, 0), 0.0));
            }
        }
        _ => {
            return Err(KernelError::UnsupportedDType {
                op: "q8_weight_blocks",
                dtype,
            });
        }
    }
    Ok(out)
}

/// `x W^T` as the products against 8-bit activations compute it: x (n_tokens, n_in) quantized
/// per block of 32, W (n_out, n_in) as `dtype` bytes; per block
/// d_w (d (q_w . q) + d2 (q_w . r)) + m_w sum(x).
pub fn matmul_q8(
    x: &[f32],
    dtype: DType,
    w_bytes: &[u8],
    n_in: usize,
) -> Result<Vec<f32>, KernelError> {
    let blocks = q8_weight_blocks(dtype, w_bytes)?;
    let per_row = n_in / 32;
    let mut out = Vec::new();
    for xr in x.chunks_exact(n_in) {
        let xq: Vec<_> = xr.chunks_exact(32).map(quantize_q8_block).collect();
        for wr in blocks.chunks_exact(per_row) {
            let mut acc = 0.0f32;
            for ((wq, wd, wm), x) in wr.iter().zip(&xq) {
                let dot = |plane: &[i8; 32]| -> f32 {
                    let s: i32 = wq
                        .iter()
                        .zip(plane)
                        .map(|(&a, &b)| i32::from(a) * i32::from(b))
                        .sum();
                    s as f32
                };
                acc += wd * (x.d * dot(&x.q) + x.d2 * dot(&x.r)) + wm * x.sum;
            }
            out.push(acc);
        }
    }
    Ok(out)
}

/// Encodes `x` (a whole number of blocks) as `dtype`, rounding as ggml's reference quantizers do
/// (K-quants: a simpler fit, see `kquant`).
pub fn quantize(dtype: DType, x: &[f32]) -> Result<Vec<u8>, KernelError> {
    let unsupported = || KernelError::UnsupportedDType {
        op: "quantize",
        dtype,
    };
    dtype.bytes_for(x.len() as u64).ok_or_else(unsupported)?;
    let mut out = Vec::new();
    match dtype {
        DType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        DType::Q4_0 => {
            for block in x.chunks_exact(32) {
                // The element of largest magnitude maps to -8, keeping its sign.
                let max = block
                    .iter()
                    .copied()
                    .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(block[j]) | (q(block[j + 16]) << 4));
                }
            }
        }
        DType::Q4_1 => {
            for block in x.chunks_exact(32) {
                let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(block[j]) | (q(block[j + 16]) << 4));
                }
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            for block in x.chunks_exact(32) {
                let (d, min, q): (f32, f32, Vec<u8>) = if dtype == DType::Q5_0 {
                    // As Q4_0: the element of largest magnitude maps to -16, keeping its sign.
                    let max = block
                        .iter()
                        .copied()
                        .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                    let d = max / -16.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let q = block
                        .iter()
                        .map(|v| ((v * id + 16.5) as i32).clamp(0, 31) as u8)
                        .collect();
                    (d, 0.0, q)
                } else {
                    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (max - min) / 31.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let q = block
                        .iter()
                        .map(|v| (((v - min) * id + 0.5) as i32).clamp(0, 31) as u8)
                        .collect();
                    (d, min, q)
                };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                if dtype == DType::Q5_1 {
                    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                }
                let qh = q
                    .iter()
                    .enumerate()
                    .fold(0u32, |h, (j, v)| h | (u32::from(v >> 4) << j));
                out.extend_from_slice(&qh.to_le_bytes());
                for j in 0..16 {
                    out.push((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
                }
            }
        }
        DType::Q8_0 => {
            for block in x.chunks_exact(32) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        DType::Q4_K => kquant::quantize_q4_k(x, &mut out),
        DType::Q5_K => kquant::quantize_q5_k(x, &mut out),
        DType::Q6_K => kquant::quantize_q6_k(x, &mut out),
        _ => return Err(unsupported()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect()
    }

    /// Two 8-bit planes rebuild each value within max|x| / 64516 (half a step of d / 254), where
    /// one plane leaves up to max|x| / 254; an outlier does not change that.
    #[test]
    fn activation_planes_rebuild_within_half_a_second_plane_step() {
        let mut x = sample(64);
        x[5] = 300.0;
        for block in x.chunks_exact(32) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let a = quantize_q8_block(block);
            assert_eq!(a.d, amax / 127.0);
            let mut one_plane_worst = 0.0f32;
            for (j, &v) in block.iter().enumerate() {
                let one = a.d * f32::from(a.q[j]);
                let two = one + a.d2 * f32::from(a.r[j]);
                assert!((v - two).abs() <= amax / 64516.0 * 1.001, "{v} -> {two}");
                one_plane_worst = one_plane_worst.max((v - one).abs());
            }
            assert!(one_plane_worst > amax / 64516.0 * 10.0);
            let sum: f32 = block.iter().sum();
            assert!((a.sum - sum).abs() <= 1e-4 * amax, "{} vs {sum}", a.sum);
        }
        let zero = quantize_q8_block(&[0.0; 32]);
        assert_eq!(
            (zero.q, zero.r, zero.d, zero.sum),
            ([0; 32], [0; 32], 0.0, 0.0)
        );
    }

    #[test]
    fn round_trips_within_the_format_precision() {
        let x = sample(256);
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (dtype, tol) in [
            (DType::F32, 0.0),
            (DType::F16, 2e-3),
            (DType::BF16, 2e-2),
            (DType::Q8_0, amax / 127.0),
            (DType::Q4_0, amax / 7.0),
            (DType::Q4_1, amax / 7.0),
            (DType::Q5_0, amax / 15.0),
            (DType::Q5_1, amax / 15.0),
            (DType::Q4_K, amax / 7.0),
            (DType::Q5_K, amax / 15.0),
            (DType::Q6_K, amax / 31.0),
        ] {
            let q = quantize(dtype, &x).unwrap();
            assert_eq!(q.len() as u64, dtype.bytes_for(256).unwrap());
            let y = dequantize(dtype, &q, 256).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= tol, "{dtype}: max error {err} > {tol}");
        }
    }

    #[test]
    fn q4_0_layout_matches_ggml() {
        // d = -1: element j is stored as j' = 8 - x; low nibbles hold elements 0..16.
        let mut x = vec![0.0f32; 32];
        x[0] = 8.0;
        x[16] = -7.0;
        let q = quantize(DType::Q4_0, &x).unwrap();
        assert_eq!(f16::from_le_bytes([q[0], q[1]]).to_f32(), -1.0);
        assert_eq!(q[2] & 0x0f, 0);
        assert_eq!(q[2] >> 4, 15);
        assert_eq!(q[3], 8 | (8 << 4));
    }
}
