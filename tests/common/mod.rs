//! Shared test helpers: the test model, the reference data, the GPU.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sovereign::gpu::{GpuContext, GpuOptions};
use sovereign::wgpu;

/// The SmolLM2-135M-Instruct Q4_1 file: `SOVEREIGN_TEST_MODEL`, else the default model cache.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SOVEREIGN_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is not set");
    let path = home.join("sovereign/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "test model missing at {}: run `sovereign run` once or set SOVEREIGN_TEST_MODEL",
        path.display()
    );
    path
}

/// `tests/reference/<name>`.
pub fn reference_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(name)
}

pub fn greedy_cases() -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(reference_path("smollm2-135m-instruct-q4_1.greedy.json")).unwrap();
    serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap()
}

/// A GPU context; fails the test loudly when there is no adapter.
pub fn gpu(options: GpuOptions) -> Arc<GpuContext> {
    match pollster::block_on(GpuContext::new(&options)) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => panic!("no usable GPU adapter ({e}); GPU tests never skip"),
    }
}

/// A context whose prefill products run on cooperative matrices, where the adapter has them; on
/// a CPU adapter with them (lavapipe since Mesa 26, 8x8x8), with the GPU-shaped kernels, so that
/// the cooperative-matrix kernel is what runs. Mesa 22.3's lavapipe has none, so in CI this says
/// so and returns `None`; with `SOVEREIGN_REQUIRE_COOP_MATRIX=1` (set where the adapter has
/// them) their absence fails the test.
#[allow(dead_code)]
pub fn coop_matrix_gpu() -> Option<Arc<GpuContext>> {
    let ctx = gpu(GpuOptions {
        coop_matrix: true,
        gpu_kernels_on_cpu: true,
        ..Default::default()
    });
    if ctx.features().coop_matrix {
        return Some(ctx);
    }
    let required = std::env::var("SOVEREIGN_REQUIRE_COOP_MATRIX").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "SOVEREIGN_REQUIRE_COOP_MATRIX=1 but {} has no usable cooperative matrices",
        ctx.adapter_info().name
    );
    eprintln!(
        "{} has no usable cooperative matrices: matmul_coop is not run here",
        ctx.adapter_info().name
    );
    None
}

/// A fixed-seed xorshift generator for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.next_u32() as f32 / 2_147_483_648.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

pub fn storage(ctx: &GpuContext, data: &[f32]) -> wgpu::Buffer {
    pollster::block_on(ctx.storage_buffer_init("test", bytemuck::cast_slice(data))).unwrap()
}

/// A storage buffer of f16 values (rounded from `data`).
pub fn storage_f16(ctx: &GpuContext, data: &[f32]) -> wgpu::Buffer {
    let bytes: Vec<u8> = data
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    pollster::block_on(ctx.storage_buffer_init("test", &bytes)).unwrap()
}

/// A KV cache of `kv_type` holding `data` (rows of `kv_stride`), rounded as that type holds it.
pub fn kv_storage(
    ctx: &GpuContext,
    kv_type: sovereign::kernels::KvType,
    data: &[f32],
    kv_stride: usize,
) -> wgpu::Buffer {
    use sovereign::kernels::KvType;
    match kv_type {
        KvType::F32 => storage(ctx, data),
        KvType::F16 => storage_f16(ctx, data),
        KvType::Q8_0 => {
            let words = sovereign::reference::kv_q8_encode(data, kv_stride as u32);
            pollster::block_on(ctx.storage_buffer_init("test", bytemuck::cast_slice(&words)))
                .unwrap()
        }
    }
}

/// The values of `rows` rows of a KV cache of `kv_type`.
pub fn read_kv(
    ctx: &GpuContext,
    kv_type: sovereign::kernels::KvType,
    buffer: &wgpu::Buffer,
    rows: usize,
    kv_stride: usize,
) -> Vec<f32> {
    use sovereign::kernels::KvType;
    match kv_type {
        KvType::F32 => read_f32(ctx, buffer, rows * kv_stride),
        KvType::F16 => read_f16(ctx, buffer, rows * kv_stride),
        KvType::Q8_0 => {
            let words = sovereign::kernels::kv_store::q8_row_words(kv_stride as u32) as usize;
            let raw = read_u32(ctx, buffer, rows * words);
            sovereign::reference::kv_q8_decode(&raw, kv_stride as u32)
        }
    }
}

/// The cache types `ctx` can run.
pub fn kv_types(ctx: &GpuContext) -> Vec<sovereign::kernels::KvType> {
    sovereign::kernels::KvType::ALL
        .into_iter()
        .filter(|t| !t.needs_shader_f16() || ctx.features().shader_f16)
        .collect()
}

pub fn zeros(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    storage(ctx, &vec![0.0; n])
}

/// Writes the step, records `dispatches` in one pass, submits and waits.
pub fn run(
    ctx: &GpuContext,
    dispatches: &[&sovereign::kernels::Dispatch],
    pos0: u32,
    tokens: &[u32],
    step: &sovereign::kernels::StepBuffer,
) {
    // One sequence in slot 0 at pages 0, 1, ...; every token row is an output row.
    let rows: Vec<u32> = (0..tokens.len() as u32).collect();
    let shape = step.write_single(ctx, pos0, tokens, &rows).unwrap();
    encode(ctx, dispatches, shape);
}

/// Writes a step of any shape (several sequences, any block tables) and runs `dispatches`.
pub fn run_step(
    ctx: &GpuContext,
    dispatches: &[&sovereign::kernels::Dispatch],
    input: &sovereign::kernels::StepInput<'_>,
    step: &sovereign::kernels::StepBuffer,
) {
    let shape = step.write(ctx, input).unwrap();
    encode(ctx, dispatches, shape);
}

fn encode(
    ctx: &GpuContext,
    dispatches: &[&sovereign::kernels::Dispatch],
    shape: sovereign::kernels::StepShape,
) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    sovereign::kernels::encode_all(ctx, &mut encoder, dispatches.iter().copied(), shape);
    ctx.queue().submit([encoder.finish()]);
}

pub fn read_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let rb = pollster::block_on(sovereign::gpu::ReadbackBuffer::new(
        ctx,
        "test",
        (n * 4) as u64,
    ))
    .unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    rb.copy_from(&mut encoder, buffer, 0, (n * 4) as u64)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    pollster::block_on(rb.read_f32(ctx, n)).unwrap()
}

pub fn read_f16(ctx: &GpuContext, buffer: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let bytes = (n * 2).next_multiple_of(4) as u64;
    let rb = pollster::block_on(sovereign::gpu::ReadbackBuffer::new(ctx, "test", bytes)).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    rb.copy_from(&mut encoder, buffer, 0, bytes).unwrap();
    ctx.queue().submit([encoder.finish()]);
    let raw = pollster::block_on(rb.read(ctx, bytes)).unwrap();
    raw.chunks_exact(2)
        .take(n)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

pub fn read_u32(ctx: &GpuContext, buffer: &wgpu::Buffer, n: usize) -> Vec<u32> {
    let rb = pollster::block_on(sovereign::gpu::ReadbackBuffer::new(
        ctx,
        "test",
        (n * 4) as u64,
    ))
    .unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    rb.copy_from(&mut encoder, buffer, 0, (n * 4) as u64)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    pollster::block_on(rb.read_u32(ctx, n)).unwrap()
}

/// Asserts |got - want| <= atol + rtol * |want| element-wise, naming the first bad index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (error {err})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        want.iter().any(|v| *v != 0.0),
        "{what}: reference is all zeros, the test proves nothing"
    );
    eprintln!("{what}: max error {:.3e} at {}", worst.0, worst.1);
}
