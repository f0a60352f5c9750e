//! Every kernel on the adapter at hand against its CPU reference, on random inputs with fixed
//! seeds, as one async call. The native test suite checks kernels in far more shapes
//! (`tests/kernels.rs`); this pass exists for adapters those tests cannot reach, such as a
//! browser's WebGPU, where it runs from the page (`WebEngine.kernelChecks`).

use serde::Serialize;

use super::argmax::Argmax;
use super::attention::{Attention, AttentionParams, AttentionPath};
use super::embed::Embed;
use super::kv_store::{KvStore, KvStoreParams, KvType, q8_row_words};
use super::matmul::{Matmul, MatmulKernel, MatmulLayout};
use super::rms_norm::RmsNorm;
use super::silu_mul::SiluMul;
use super::{Dispatch, KernelError, PagedLayout, StepBuffer, WEIGHT_DTYPES, encode_all};
use crate::Result;
use crate::format::DType;
use crate::gpu::{GpuContext, ReadbackBuffer, WeightTensor};
use crate::reference::{self, AttentionShape, RopeConfig};

/// One comparison: the largest error seen against what the kernel may differ by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    /// Largest `|got - want| - rtol * |want|` over the output (0 or less is exact enough).
    pub max_error: f32,
    /// The absolute tolerance that excess is held to.
    pub tolerance: f32,
    pub passed: bool,
}

/// A xorshift generator: the same inputs on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// `n` values in [-scale, scale).
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 32) as u32 as f32 / 2_147_483_648.0 - 1.0) * scale
            })
            .collect()
    }
}

fn compare(name: String, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Check {
    let mut worst = if got.len() == want.len() {
        0.0f32
    } else {
        f32::INFINITY
    };
    for (g, w) in got.iter().zip(want) {
        let excess = (g - w).abs() - rtol * w.abs();
        // NaN compares false everywhere: count it as the worst error there is.
        worst = if excess.is_nan() {
            f32::INFINITY
        } else {
            worst.max(excess)
        };
    }
    Check {
        name,
        max_error: worst,
        tolerance: atol,
        passed: worst <= atol,
    }
}

struct Bench<'a> {
    ctx: &'a GpuContext,
}

impl Bench<'_> {
    async fn buffer(&self, data: &[f32]) -> Result<wgpu::Buffer> {
        Ok(self
            .ctx
            .storage_buffer_init("selftest", bytemuck::cast_slice(data))
            .await?)
    }

    async fn buffer_f16(&self, data: &[f32]) -> Result<wgpu::Buffer> {
        let mut halves: Vec<u16> = data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        if halves.len() % 2 == 1 {
            halves.push(0);
        }
        Ok(self
            .ctx
            .storage_buffer_init("selftest", bytemuck::cast_slice(&halves))
            .await?)
    }

    /// A KV cache of `kv_type` holding `data` (rows of `kv_stride`), rounded as that type holds it.
    async fn kv_buffer(
        &self,
        kv_type: KvType,
        data: &[f32],
        kv_stride: usize,
    ) -> Result<wgpu::Buffer> {
        match kv_type {
            KvType::F32 => self.buffer(data).await,
            KvType::F16 => self.buffer_f16(data).await,
            KvType::Q8_0 => {
                let words = reference::kv_q8_encode(data, kv_stride as u32);
                Ok(self
                    .ctx
                    .storage_buffer_init("selftest", bytemuck::cast_slice(&words))
                    .await?)
            }
        }
    }

    /// The values of `rows` rows of a KV cache of `kv_type`.
    async fn read_kv(
        &self,
        kv_type: KvType,
        buffer: &wgpu::Buffer,
        rows: usize,
        kv_stride: usize,
    ) -> Result<Vec<f32>> {
        match kv_type {
            KvType::F32 => self.read(buffer, rows * kv_stride).await,
            KvType::F16 => self.read_f16(buffer, rows * kv_stride).await,
            KvType::Q8_0 => {
                let words = q8_row_words(kv_stride as u32) as usize;
                let raw = self.read_bytes(buffer, (rows * words * 4) as u64).await?;
                let raw: Vec<u32> = bytemuck::pod_collect_to_vec(&raw);
                Ok(reference::kv_q8_decode(&raw, kv_stride as u32))
            }
        }
    }

    async fn step(&self, max: u32) -> Result<StepBuffer> {
        let layout = PagedLayout {
            page_size: 16,
            pages_per_seq: 4096 / 16,
            max_slots: 1,
        };
        Ok(StepBuffer::new(self.ctx, max, layout).await?)
    }

    /// One sequence at `pos0..`, every row an output row; submits and returns at once.
    fn run(&self, dispatches: &[&Dispatch], step: &StepBuffer, pos0: u32, n: usize) -> Result<()> {
        let tokens = vec![0u32; n];
        let rows: Vec<u32> = (0..n as u32).collect();
        let shape = step.write_single(self.ctx, pos0, &tokens, &rows)?;
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        encode_all(self.ctx, &mut encoder, dispatches.iter().copied(), shape);
        self.ctx.queue().submit([encoder.finish()]);
        Ok(())
    }

    async fn read_bytes(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let rb = ReadbackBuffer::new(self.ctx, "selftest", bytes).await?;
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        rb.copy_from(&mut encoder, buffer, 0, bytes)?;
        self.ctx.queue().submit([encoder.finish()]);
        Ok(rb.read(self.ctx, bytes).await?)
    }

    async fn read(&self, buffer: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let raw = self.read_bytes(buffer, (n * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }

    async fn read_f16(&self, buffer: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let raw = self
            .read_bytes(buffer, (n * 2).next_multiple_of(4) as u64)
            .await?;
        Ok(raw
            .chunks_exact(2)
            .take(n)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect())
    }

    async fn weights(
        &self,
        rng: &mut Rng,
        dtype: DType,
        n_rows: usize,
        row_len: usize,
    ) -> Result<(WeightTensor, Vec<f32>, Vec<u8>)> {
        let values = rng.vec(n_rows * row_len, 1.0);
        let bytes = reference::quantize(dtype, &values)?;
        let deq = reference::dequantize(dtype, &bytes, values.len())?;
        let w = WeightTensor::upload(
            self.ctx,
            "selftest",
            dtype,
            row_len as u32,
            n_rows as u32,
            &bytes,
        )
        .await?;
        Ok((w, deq, bytes))
    }
}

/// What `op` computes for `x` against the weights (`deq` dequantized, `bytes` as stored): the
/// product on the dequantized weights, or, for a kernel that reads 8-bit activations, that
/// product's own arithmetic (`reference::quant::matmul_q8`).
fn product_ref(
    op: &Matmul,
    x: &[f32],
    dtype: DType,
    deq: &[f32],
    bytes: &[u8],
    n_in: usize,
) -> Result<Vec<f32>> {
    if op.reads_q8() {
        Ok(reference::quant::matmul_q8(x, dtype, bytes, n_in)?)
    } else if op.rounds_to_f16() {
        let (mut x16, mut deq16) = (x.to_vec(), deq.to_vec());
        reference::round_f16(&mut x16);
        reference::round_f16(&mut deq16);
        Ok(reference::matmul(&x16, &deq16, n_in))
    } else {
        Ok(reference::matmul(x, deq, n_in))
    }
}

/// `n` rounded up to whole blocks of `dtype` (K-quant rows are multiples of 256).
pub fn whole_blocks(dtype: DType, n: usize) -> usize {
    n.next_multiple_of(dtype.block_len() as usize)
}

/// Runs every check; an error means a kernel could not run at all (a failed comparison is a
/// [`Check`] with `passed: false`).
pub async fn run_all(ctx: &GpuContext) -> Result<Vec<Check>> {
    let b = Bench { ctx };
    let mut checks = Vec::new();
    let mut rng = Rng::new(7);
    let kv_types: Vec<KvType> = KvType::ALL
        .into_iter()
        .filter(|t| !t.needs_shader_f16() || ctx.features().shader_f16)
        .collect();

    // Embedding lookup, every weight type.
    for dtype in WEIGHT_DTYPES {
        let (n_vocab, n_embd) = (300, whole_blocks(dtype, 96));
        let tokens = [0u32, 299, 17, 150];
        let (table, deq, _) = b.weights(&mut rng, dtype, n_vocab, n_embd).await?;
        let out = b.buffer(&vec![0.0; 8 * n_embd]).await?;
        let step = b.step(8).await?;
        let op = Embed::new(ctx, dtype).await?;
        let d = op.bind(ctx, step.buffer(), &table, &out, 8)?;
        let shape = step.write_single(ctx, 0, &tokens, &[0, 1, 2, 3])?;
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        encode_all(ctx, &mut encoder, d.iter(), shape);
        ctx.queue().submit([encoder.finish()]);
        let got = b.read(&out, tokens.len() * n_embd).await?;
        let want = reference::embed(&deq, n_embd, &tokens);
        checks.push(compare(format!("embed {dtype}"), &got, &want, 0.0, 0.0));
    }

    // RMS norm.
    {
        let (n, n_embd, eps) = (5usize, 576usize, 1e-5f32);
        let x = rng.vec(n * n_embd, 3.0);
        let w = rng.vec(n_embd, 1.0);
        let want = reference::rms_norm(&x, &w, eps);
        // The buffers hold the step's most tokens (8); the rows past `n` are not computed.
        let mut padded = x.clone();
        padded.resize(8 * n_embd, 0.0);
        let (xb, wb) = (b.buffer(&padded).await?, b.buffer(&w).await?);
        let out = b.buffer(&vec![0.0; 8 * n_embd]).await?;
        let step = b.step(8).await?;
        let op = RmsNorm::new(ctx).await?;
        let d = op.bind(
            ctx,
            step.buffer(),
            &xb,
            &wb,
            &out,
            n_embd as u32,
            eps,
            false,
            8,
        )?;
        b.run(&[&d], &step, 0, n)?;
        let got = b.read(&out, n * n_embd).await?;
        checks.push(compare("rms_norm".into(), &got, &want, 1e-5, 1e-5));
    }

    // K rotated and K/V stored at their positions, and Q rotated in place by the same dispatch,
    // in every cache type the adapter has, in both RoPE layouts.
    for &kv_type in &kv_types {
        for (neox, n_rot, pos0) in [(false, 64, 9u32), (true, 48, 300)] {
            let (n_head, n_head_kv, head_dim, n) = (5usize, 3usize, 64usize, 4usize);
            let row = n_head_kv * head_dim;
            let q_width = n_head * head_dim;
            let src_stride = q_width + 2 * row;
            let n_ctx = pos0 as usize + n + 2;
            let cfg = RopeConfig {
                n_rot,
                freq_base: 10_000.0,
                freq_scale: 1.0,
                neox,
            };
            // Rows of q | k | v, as the projections write them.
            let qkv = rng.vec(n * src_stride, 2.0);
            let column = |t: usize, col0: usize, width: usize| {
                &qkv[t * src_stride + col0..t * src_stride + col0 + width]
            };
            let positions: Vec<u32> = (pos0..pos0 + n as u32).collect();
            let mut q_want = Vec::new();
            let (mut k_rot, mut v_new) = (Vec::new(), Vec::new());
            for t in 0..n {
                q_want.extend_from_slice(column(t, 0, q_width));
                k_rot.extend_from_slice(column(t, q_width, row));
                v_new.extend_from_slice(column(t, q_width + row, row));
            }
            reference::rope(&mut q_want, n_head, head_dim, &positions, cfg);
            reference::rope(&mut k_rot, n_head_kv, head_dim, &positions, cfg);
            let mut k_want = vec![0.0; n_ctx * row];
            let mut v_want = k_want.clone();
            let range = pos0 as usize * row..(pos0 as usize + n) * row;
            k_want[range.clone()].copy_from_slice(&k_rot);
            v_want[range].copy_from_slice(&v_new);
            reference::round_kv(&mut k_want, kv_type);
            reference::round_kv(&mut v_want, kv_type);
            let zeros = vec![0.0; n_ctx * row];
            let kc = b.kv_buffer(kv_type, &zeros, row).await?;
            let vc = b.kv_buffer(kv_type, &zeros, row).await?;
            let params = KvStoreParams {
                n_head_kv: n_head_kv as u32,
                head_dim: head_dim as u32,
                n_rot: n_rot as u32,
                neox: u32::from(neox),
                freq_base: cfg.freq_base,
                freq_scale: cfg.freq_scale,
                kv_stride: row as u32,
                src_stride: src_stride as u32,
                k_col0: q_width as u32,
                v_col0: (q_width + row) as u32,
                n_head: n_head as u32,
                ..Default::default()
            };
            let step = b.step(8).await?;
            let qkv_buffer = b.buffer(&qkv).await?;
            let d = KvStore::new(ctx, kv_type).await?.bind(
                ctx,
                step.buffer(),
                &qkv_buffer,
                &kc,
                &vc,
                params,
                n as u32,
                n_ctx as u32,
            )?;
            b.run(&[&d], &step, pos0, n)?;
            let k_got = b.read_kv(kv_type, &kc, n_ctx, row).await?;
            let v_got = b.read_kv(kv_type, &vc, n_ctx, row).await?;
            let qkv_got = b.read(&qkv_buffer, qkv.len()).await?;
            let q_got: Vec<f32> = qkv_got
                .chunks(src_stride)
                .flat_map(|r| &r[..q_width])
                .copied()
                .collect();
            let layout = format!("neox={neox} n_rot={n_rot}");
            // WGSL bounds sin and cos only to 2^-11 absolute error, and browsers' software
            // adapters use that room; each rotated value sums two such terms of inputs up to 2.
            let rotation = 2.0 * 2.0 * 2f32.powi(-11);
            // K: the rotation's rounding, plus (f16) half an f16 step, or (Q8_0) a value that
            // lands on the other side of a rounding boundary: one step of its block, at most
            // 2.9 / 127. V is copied: the reference's rounding exactly, bar such a boundary in
            // Q8_0.
            let (k_atol, k_rtol, v_atol) = match kv_type {
                KvType::F32 => (rotation, 1e-5, 0.0),
                KvType::F16 => (rotation, 1e-3, 0.0),
                KvType::Q8_0 => (2.9 / 127.0, 0.0, 2.9 / 127.0),
            };
            checks.push(compare(
                format!("kv_store {kv_type} Q {layout}"),
                &q_got,
                &q_want,
                rotation,
                1e-5,
            ));
            checks.push(compare(
                format!("kv_store {kv_type} K {layout}"),
                &k_got,
                &k_want,
                k_atol,
                k_rtol,
            ));
            checks.push(compare(
                format!("kv_store {kv_type} V {layout}"),
                &v_got,
                &v_want,
                v_atol,
                0.0,
            ));
        }
    }

    // Matrix products: the decode (vector) and prefill (tiled) kernels, every weight type.
    for (i, dtype) in WEIGHT_DTYPES.into_iter().enumerate() {
        let seed = 100 + 2 * i as u64;
        let n_in = whole_blocks(dtype, 576);
        checks.push(matmul(ctx, MatmulKernel::Vector, dtype, 1, n_in, 200, seed).await?);
        checks.push(matmul(ctx, MatmulKernel::Tiled, dtype, 37, n_in, 130, seed + 1).await?);
        if Matmul::has_batch(ctx.features()) {
            let kind = MatmulKernel::VectorBatch;
            checks.push(matmul(ctx, kind, dtype, 11, n_in, 130, seed + 2).await?);
        }
        // The gated products, where the adapter has them.
        for (kind, n) in [
            (MatmulKernel::Vector, 1),
            (MatmulKernel::VectorBatch, 11),
            (MatmulKernel::Tiled, 11),
        ] {
            checks.extend(matmul_gated(ctx, kind, dtype, n, n_in, 65, seed + 3).await?);
        }
    }

    // Attention over a contiguous cache: prefill with the causal mask, and decode at several
    // context lengths, with GQA.
    for &kv_type in &kv_types {
        for (i, (pos0, n)) in [(0usize, 40usize), (63, 1), (700, 1)]
            .into_iter()
            .enumerate()
        {
            for (p, path) in AttentionPath::ALL.into_iter().enumerate() {
                let seed = 200 + 10 * p as u64 + i as u64;
                checks.push(attention(ctx, kv_type, path, 9, 3, 64, pos0, n, seed).await?);
            }
        }
    }

    // SiLU(gate) * up.
    {
        let (n, width) = (3usize, 1536usize);
        let gate = rng.vec(n * width, 6.0);
        let up = rng.vec(n * width, 2.0);
        let gate_up = b.buffer(&reference::join_rows(&gate, &up, width)).await?;
        let gb = b.buffer(&vec![0.0; gate.len()]).await?;
        let step = b.step(4).await?;
        let d =
            SiluMul::new(ctx)
                .await?
                .bind(ctx, step.buffer(), &gate_up, &gb, width as u32, 3)?;
        b.run(&[&d], &step, 0, n)?;
        let got = b.read(&gb, gate.len()).await?;
        let want = reference::silu_mul(&gate, &up);
        checks.push(compare("silu_mul".into(), &got, &want, 1e-6, 1e-5));
    }

    // Argmax over a vocabulary-sized row, ties going to the lower index.
    {
        let width = 49152usize;
        let mut x = rng.vec(2 * width, 10.0);
        x[width + 40000] = 50.0;
        x[width + 7] = 50.0;
        let out = b.buffer(&[0.0; 2]).await?;
        let step = b.step(4).await?;
        let xb = b.buffer(&x).await?;
        let d = Argmax::new(ctx)
            .await?
            .bind(ctx, step.buffer(), &xb, &out, width as u32, 2)?;
        b.run(&[&d], &step, 0, 2)?;
        let raw = b.read_bytes(&out, 8).await?;
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&raw);
        let want: Vec<u32> = x
            .chunks(width)
            .map(|r| reference::argmax(r) as u32)
            .collect();
        let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        checks.push(Check {
            name: format!("argmax (got {got:?}, want {want:?})"),
            max_error: wrong as f32,
            tolerance: 0.0,
            passed: wrong == 0 && got.len() == want.len(),
        });
    }
    Ok(checks)
}

/// `y = x W^T` for `n` tokens with the kernel of `kind` (decode, batched decode, prefill), on random
/// weights of `dtype` from `seed`, against the reference on the dequantized weights.
#[allow(clippy::too_many_arguments)]
pub async fn matmul(
    ctx: &GpuContext,
    kind: MatmulKernel,
    dtype: DType,
    n: usize,
    n_in: usize,
    n_out: usize,
    seed: u64,
) -> Result<Check> {
    let b = Bench { ctx };
    let mut rng = Rng::new(seed);
    let (w, deq, bytes) = b.weights(&mut rng, dtype, n_out, n_in).await?;
    let x = rng.vec(n * n_in, 1.0);
    let Some(op) = Matmul::of_kind(ctx, kind, dtype).await? else {
        return Err(KernelError::Shape {
            op: "matmul",
            message: format!("{kind:?}: this adapter has no such kernel"),
        }
        .into());
    };
    let want = product_ref(&op, &x, dtype, &deq, &bytes, n_in)?;
    let max = n.max(8);
    let xb = b.buffer(&x).await?;
    // Stale values, which the product must overwrite.
    let y = b.buffer(&rng.vec(max * n_out, 100.0)).await?;
    let step = b.step(max as u32).await?;
    let mut layout = MatmulLayout::rows(n_in as u32, n_out as u32, n as u32);
    let d = op.bind(ctx, step.buffer(), &w, &xb, &y, layout)?;
    b.run(&d.iter().collect::<Vec<_>>(), &step, 0, n)?;
    let mut got = b.read(&y, n * n_out).await?;
    let alone_differs = first_token_alone(&b, &op, &step, &w, &xb, n, n_in, n_out, &got).await?;
    // Then added to what y holds (the residual add folded into a projection): y + y is 2 y
    // exactly, so the sum must be twice the product.
    layout.accumulate = true;
    let d = op.bind(ctx, step.buffer(), &w, &xb, &y, layout)?;
    b.run(&d.iter().collect::<Vec<_>>(), &step, 0, n)?;
    let doubled = b.read(&y, n * n_out).await?;
    let added: Vec<f32> = got
        .iter()
        .zip(&doubled)
        .map(|(once, twice)| twice - once)
        .collect();
    got.extend(added);
    let mut want2 = want.clone();
    want2.extend(&want);
    let mut check = compare(
        format!(
            "matmul {}{} {dtype} {n}x{n_in}x{n_out} ({} buffers), then accumulated",
            match kind {
                MatmulKernel::Vector => "decode",
                MatmulKernel::VectorBatch => "batched decode",
                MatmulKernel::Tiled => "prefill",
            },
            if op.reads_q8() { " (8-bit x)" } else { "" },
            w.chunks.len()
        ),
        &got,
        &want2,
        2e-5 * (n_in as f32).sqrt(),
        1e-4,
    );
    fail_if_alone_differs(&mut check, n, alone_differs);
    Ok(check)
}

/// A token's outputs must not depend on the step's other tokens (sequences batched together give
/// what they give alone), though on CPU adapters a step of one row has a pipeline of its own:
/// runs the first of `n` tokens alone and counts its `width` outputs that differ, bit for bit,
/// from `got`, its row among the `n`. 0 where the kernel has no such pipeline, or `n` is 1.
#[allow(clippy::too_many_arguments)]
async fn first_token_alone(
    b: &Bench<'_>,
    op: &Matmul,
    step: &StepBuffer,
    w: &WeightTensor,
    xb: &wgpu::Buffer,
    n: usize,
    n_in: usize,
    width: usize,
    got: &[f32],
) -> Result<usize> {
    if n < 2 || !op.has_one_row_kernel() {
        return Ok(0);
    }
    let y1 = b.buffer(&vec![100.0; width]).await?;
    let layout = MatmulLayout::rows(n_in as u32, width as u32, 1);
    let d = op.bind(b.ctx, step.buffer(), w, xb, &y1, layout)?;
    b.run(&d.iter().collect::<Vec<_>>(), step, 0, 1)?;
    let alone = b.read(&y1, width).await?;
    Ok(alone
        .iter()
        .zip(got)
        .filter(|(a, g)| a.to_bits() != g.to_bits())
        .count())
}

fn fail_if_alone_differs(check: &mut Check, n: usize, differs: usize) {
    if differs > 0 {
        check.passed = false;
        check.name += &format!(
            "; the first token alone differs from its outputs among {n} tokens in {differs} places"
        );
    }
}

/// The gated decode product (`Matmul::gated`) of `n` tokens: `n_ff` gate rows and `n_ff` up
/// rows of random `dtype` weights in one buffer, against the reference's two products and
/// `silu_mul`. `Ok(None)` where the adapter has no gated kernel of `kind`.
pub async fn matmul_gated(
    ctx: &GpuContext,
    kind: MatmulKernel,
    dtype: DType,
    n: usize,
    n_in: usize,
    n_ff: usize,
    seed: u64,
) -> Result<Option<Check>> {
    let Some(op) = Matmul::gated(ctx, kind, dtype).await? else {
        return Ok(None);
    };
    let b = Bench { ctx };
    let mut rng = Rng::new(seed);
    let (w, deq, bytes) = b.weights(&mut rng, dtype, 2 * n_ff, n_in).await?;
    let x = rng.vec(n * n_in, 1.0);
    let both = product_ref(&op, &x, dtype, &deq, &bytes, n_in)?;
    let mut want = Vec::with_capacity(n * n_ff);
    for row in both.chunks_exact(2 * n_ff) {
        want.extend(reference::silu_mul(&row[..n_ff], &row[n_ff..]));
    }
    let max = n.max(8);
    let xb = b.buffer(&x).await?;
    // Stale values, which the product must overwrite.
    let y = b.buffer(&rng.vec(max * n_ff, 100.0)).await?;
    let step = b.step(max as u32).await?;
    let layout = MatmulLayout::rows(n_in as u32, n_ff as u32, n as u32);
    let d = op.bind(ctx, step.buffer(), &w, &xb, &y, layout)?;
    b.run(&d.iter().collect::<Vec<_>>(), &step, 0, n)?;
    let got = b.read(&y, n * n_ff).await?;
    let alone_differs = first_token_alone(&b, &op, &step, &w, &xb, n, n_in, n_ff, &got).await?;
    let mut check = compare(
        format!("gated matmul {kind:?} {dtype} {n}x{n_in}x(2 x {n_ff})"),
        &got,
        &want,
        2e-5 * (n_in as f32).sqrt(),
        1e-4,
    );
    fail_if_alone_differs(&mut check, n, alone_differs);
    Ok(Some(check))
}

/// Attention of `n` tokens at positions `pos0..` over a contiguous cache of random K/V held as
/// `kv_type`, GQA when `n_head_kv < n_head`, by the kernel of `path`, against the reference.
#[allow(clippy::too_many_arguments)]
pub async fn attention(
    ctx: &GpuContext,
    kv_type: KvType,
    path: AttentionPath,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    pos0: usize,
    n: usize,
    seed: u64,
) -> Result<Check> {
    let b = Bench { ctx };
    let mut rng = Rng::new(seed);
    let n_ctx = pos0 + n + 3;
    let q = rng.vec(n * n_head * head_dim, 1.0);
    let mut k = rng.vec(n_ctx * n_head_kv * head_dim, 1.0);
    let mut v = rng.vec(n_ctx * n_head_kv * head_dim, 1.0);
    // The reference sees exactly the values the cache holds.
    reference::round_kv(&mut k, kv_type);
    reference::round_kv(&mut v, kv_type);
    let shape = AttentionShape {
        n_head,
        n_head_kv,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let want = reference::attention(&q, &k, &v, pos0, shape);
    let out = b.buffer(&vec![0.0; want.len()]).await?;
    let step = b.step(n as u32).await?;
    let kv_stride = n_head_kv * head_dim;
    let kb = b.kv_buffer(kv_type, &k, kv_stride).await?;
    let vb = b.kv_buffer(kv_type, &v, kv_stride).await?;
    // q as the projections write it: rows of q | k | v, here with random K and V parts.
    let q_width = n_head * head_dim;
    let q_stride = q_width + 2 * kv_stride;
    let mut q_rows = rng.vec(n * q_stride, 1.0);
    for t in 0..n {
        q_rows[t * q_stride..t * q_stride + q_width]
            .copy_from_slice(&q[t * q_width..(t + 1) * q_width]);
    }
    let params = AttentionParams {
        n_head: n_head as u32,
        n_head_kv: n_head_kv as u32,
        head_dim: head_dim as u32,
        q_stride: q_stride as u32,
        kv_stride: (n_head_kv * head_dim) as u32,
        scale: shape.scale,
        out_stride: q_width as u32,
        _pad1: 0,
    };
    let qb = b.buffer(&q_rows).await?;
    let kernel = Attention::of_path(ctx, kv_type, path, head_dim as u32).await?;
    let partials_len = Attention::partials_len(&params, n as u32, n_ctx as u32);
    let partials = b.buffer(&vec![0.0; partials_len as usize]).await?;
    let d = kernel.bind_path(
        ctx,
        step.buffer(),
        &qb,
        &kb,
        &vb,
        &partials,
        &out,
        params,
        n as u32,
        n_ctx as u32,
        n_ctx as u32,
    )?;
    b.run(&d.iter().collect::<Vec<_>>(), &step, pos0 as u32, n)?;
    let got = b.read(&out, want.len()).await?;
    Ok(compare(
        format!(
            "attention {kv_type}{} {n_head}/{n_head_kv} heads of {head_dim}, {n} tokens at {pos0}",
            match path {
                AttentionPath::Decode => "",
                AttentionPath::Split => " split",
                AttentionPath::Tiled => " tiled",
            }
        ),
        &got,
        &want,
        2e-5,
        1e-4,
    ))
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn compare_flags_errors_nan_and_short_outputs() {
        assert!(compare("same".into(), &[1.0, 2.0], &[1.0, 2.0], 0.0, 0.0).passed);
        assert!(compare("close".into(), &[1.0, 2.001], &[1.0, 2.0], 1e-3, 1e-6).passed);
        let off = compare("off".into(), &[1.0, 2.1], &[1.0, 2.0], 1e-3, 1e-6);
        assert!(!off.passed && (off.max_error - 0.1).abs() < 1e-3);
        assert!(!compare("nan".into(), &[f32::NAN], &[1.0], 1.0, 0.0).passed);
        assert!(!compare("short".into(), &[1.0], &[1.0, 2.0], 1.0, 0.0).passed);
    }
}
