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
