//! Which rowwise products a CPU adapter with subgroups runs, measured: the ones that share each
//! activation block through subgroup broadcasts, or the ones where every lane loads it
//! ([`crate::gpu::CpuProducts`]). Neither wins on every driver (benches/RESULTS.md), and both
//! compute the same floats, so the choice changes speed only.

use web_time::Instant;

use super::matmul::{Matmul, MatmulLayout};
use super::selftest::Rng;
use super::{Dispatch, KernelError, PagedLayout, StepBuffer, StepShape, encode_all, shader_source};
use crate::format::DType;
use crate::gpu::{GpuContext, ReadbackBuffer, WeightTensor};
use crate::reference;

/// Rows of the measured product at most: enough to take about a millisecond on lavapipe.
const MAX_ROWS: u32 = 3072;
/// Products per timed submit, and timed submits per kind.
const REPS: usize = 16;
const ROUNDS: usize = 7;

/// Which products the context now runs, and the median milliseconds of one decode product of
/// each kind (with the broadcasts, then without) where they were measured now rather than read
/// from an earlier run's choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuProductChoice {
    pub plain: bool,
    pub measured_ms: Option<(f64, f64)>,
}

/// On a CPU adapter whose products are still to be chosen ([`crate::gpu::CpuProducts::Measure`],
/// once per context), times one token's gated product (a model's gate|up projection: `dtype`
/// weights, `n_ff` gate rows and as many up rows of `n_in`, up to [`MAX_ROWS`] rows in all and
/// as many as one binding holds) with the broadcasts and without, alternating, and keeps the
/// faster: kernels built afterwards follow the choice, and the winner's one-token pipeline is
/// already built for the model. A choice measured before on the same adapter, driver, kernels
/// and product is taken as it is ([`GpuContext::saved_cpu_products`]). `None` where there was
/// nothing to choose; after an error, or where this product cannot be measured, the choice is
/// left to the next load.
pub async fn choose(
    ctx: &GpuContext,
    dtype: DType,
    n_ff: u32,
    n_in: u32,
) -> Result<Option<CpuProductChoice>, KernelError> {
    if !ctx.begin_cpu_products() {
        return Ok(None);
    }
    let chosen = measure(ctx, dtype, n_ff, n_in).await;
    ctx.finish_cpu_products(match &chosen {
        Ok(Some(choice)) => Some(choice.plain),
        _ => None,
    });
    chosen
}

async fn measure(
    ctx: &GpuContext,
    dtype: DType,
    n_ff: u32,
    n_in: u32,
) -> Result<Option<CpuProductChoice>, KernelError> {
    // A gated product's gate and up rows sit in one binding: as many as fit one.
    let row_bytes = dtype.bytes_for(u64::from(n_in)).unwrap_or(u64::MAX).max(1);
    let fit = (ctx.max_binding_size() / row_bytes / 2).min(u64::from(MAX_ROWS / 2)) as u32;
    let n_ff = n_ff.min(fit);
    let (Some(broadcast), Some(plain)) = (
        Matmul::cpu_gated_one_token_spec(ctx.features(), dtype, true),
        Matmul::cpu_gated_one_token_spec(ctx.features(), dtype, false),
    ) else {
        return Ok(None);
    };
    if n_ff == 0 || broadcast.0.name() == plain.0.name() {
        return Ok(None);
    }
    let what = format!(
        "{dtype} {n_ff}x2x{n_in} [{}] [{}] {:016x}",
        broadcast.0.name(),
        plain.0.name(),
        kernels_digest()?
    );
    if let Some(plain) = ctx.saved_cpu_products(&what) {
        tracing::info!("CPU adapter: {} (measured before)", describe(plain));
        return Ok(Some(CpuProductChoice {
            plain,
            measured_ms: None,
        }));
    }
    let broadcast = Matmul::cpu_gated_one_token(ctx, dtype, broadcast).await?;
    let plain = Matmul::cpu_gated_one_token(ctx, dtype, plain).await?;
    let mut rng = Rng::new(0x9e37_79b9);
    let values = rng.vec(2 * n_ff as usize * n_in as usize, 1.0);
    let bytes = reference::quantize(dtype, &values)?;
    let w = WeightTensor::upload(ctx, "cpu products", dtype, n_in, 2 * n_ff, &bytes).await?;
    let x = ctx
        .storage_buffer_init(
            "cpu products",
            bytemuck::cast_slice(&rng.vec(n_in as usize, 1.0)),
        )
        .await?;
    let y = ctx
        .storage_buffer_init("cpu products", &vec![0u8; n_ff as usize * 4])
        .await?;
    let layout = PagedLayout {
        page_size: 16,
        pages_per_seq: 1,
        max_slots: 1,
    };
    let step = StepBuffer::new(ctx, 1, layout).await?;
    let shape = step.write_single(ctx, 0, &[0], &[0])?;
    let rows = MatmulLayout::rows(n_in, n_ff, 1);
    let broadcast = broadcast.bind(ctx, step.buffer(), &w, &x, &y, rows)?;
    let plain = plain.bind(ctx, step.buffer(), &w, &x, &y, rows)?;
    let readback = ReadbackBuffer::new(ctx, "cpu products", 4).await?;
    // A first, untimed run of each.
    time(ctx, &broadcast, shape, &y, &readback).await?;
    time(ctx, &plain, shape, &y, &readback).await?;
    let (mut b_ms, mut p_ms) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Each kind goes first in every other round, so neither always follows the other.
        if round % 2 == 0 {
            b_ms.push(time(ctx, &broadcast, shape, &y, &readback).await?);
            p_ms.push(time(ctx, &plain, shape, &y, &readback).await?);
        } else {
            p_ms.push(time(ctx, &plain, shape, &y, &readback).await?);
            b_ms.push(time(ctx, &broadcast, shape, &y, &readback).await?);
        }
    }
    let (broadcast_ms, plain_ms) = (
        median(&mut b_ms) / REPS as f64,
        median(&mut p_ms) / REPS as f64,
    );
    let plain = plain_ms < broadcast_ms;
    ctx.save_cpu_products(&what, plain);
    tracing::info!(
        broadcast_ms,
        plain_ms,
        "CPU adapter: {} (measured faster)",
        describe(plain)
    );
    Ok(Some(CpuProductChoice {
        plain,
        measured_ms: Some((broadcast_ms, plain_ms)),
    }))
}

fn describe(plain: bool) -> &'static str {
    if plain {
        "rowwise products without subgroup broadcasts"
    } else {
        "rowwise products with subgroup broadcasts"
    }
}

/// A digest of the two products' shader sources: a choice measured on other kernels is
/// measured again.
fn kernels_digest() -> Result<u64, KernelError> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for shader in ["matmul_rowwise", "matmul_rowwise_subgroup"] {
        for byte in shader_source(shader)?.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(hash)
}

/// Milliseconds for REPS runs of `dispatches` and the read of one output that waits for them.
async fn time(
    ctx: &GpuContext,
    dispatches: &[Dispatch],
    shape: StepShape,
    y: &wgpu::Buffer,
    readback: &ReadbackBuffer,
) -> Result<f64, KernelError> {
    let start = Instant::now();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..REPS {
        encode_all(ctx, &mut encoder, dispatches, shape);
    }
    readback.copy_from(&mut encoder, y, 0, 4)?;
    ctx.queue().submit([encoder.finish()]);
    readback.read(ctx, 4).await?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
