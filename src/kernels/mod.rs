//! One module per WGSL shader: its params struct, shape checks, bind group and dispatch.
//!
//! Every dispatch is built once (pipeline and bind group) and recorded into a command encoder
//! at each step; what changes per step is only the [`StepBuffer`], written with one queue write.

pub mod add;
pub mod argmax;
pub mod attention;
pub mod embed;
pub mod kv_store;
pub mod matmul;
pub mod rms_norm;
pub mod rope;
pub mod silu_mul;
pub mod source;

use std::sync::Arc;

use crate::format::DType;
use crate::gpu::{GpuContext, GpuError, GpuFeatures};

pub use source::shader_source;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no shader named {0:?}")]
    UnknownShader(String),
    #[error("shader helper {0:?} includes another file; helpers must be self-contained")]
    NestedInclude(String),
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },
    #[error(
        "{op}: weights of type {dtype} are not supported (supported: F32, F16, Q4_0, Q4_1, Q8_0)"
    )]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

pub(crate) fn shape_error(op: &'static str, message: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        message: message.into(),
    }
}

/// Weight types the matmul and embedding shaders dequantize.
pub const WEIGHT_DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
];

pub(crate) fn check_weight_dtype(op: &'static str, dtype: DType) -> Result<(), KernelError> {
    if WEIGHT_DTYPES.contains(&dtype) {
        Ok(())
    } else {
        Err(KernelError::UnsupportedDType { op, dtype })
    }
}

/// A `#[repr(C)]` params struct shared with WGSL. The field list lets a test compare the Rust
/// layout with naga's layout of the WGSL struct of the same name.
pub trait GpuParams: bytemuck::Pod {
    const WGSL_NAME: &'static str;
    /// (name, offset, size) of each field.
    fn fields() -> Vec<(&'static str, usize, usize)>;
}

/// Declares a params struct (u32/f32 fields only) and its [`GpuParams`] layout description.
#[macro_export]
macro_rules! gpu_params {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }

        impl $crate::kernels::GpuParams for $name {
            const WGSL_NAME: &'static str = stringify!($name);
            fn fields() -> Vec<(&'static str, usize, usize)> {
                vec![$((stringify!($field), core::mem::offset_of!($name, $field), core::mem::size_of::<$ty>())),*]
            }
        }
    };
}

gpu_params! {
    /// The fixed head of `Step` in `shaders/common/step.wgsl`; token ids follow it.
    pub struct Step {
        pub n_tokens: u32,
        pub pos0: u32,
        pub n_kv: u32,
        pub _pad: u32,
    }
}

/// The per-step storage buffer: [`Step`] then `max_tokens` token ids.
#[derive(Debug)]
pub struct StepBuffer {
    buffer: wgpu::Buffer,
    max_tokens: u32,
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl StepBuffer {
    pub async fn new(ctx: &GpuContext, max_tokens: u32) -> Result<Self, KernelError> {
        let size = (std::mem::size_of::<Step>() + 4 * max_tokens.max(1) as usize) as u64;
        let buffer = ctx
            .create_buffer(
                "step",
                size,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            )
            .await?;
        Ok(StepBuffer {
            buffer,
            max_tokens,
            bytes: std::sync::Mutex::new(Vec::with_capacity(size as usize)),
        })
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Writes this step's positions and tokens: the only host-to-GPU write of a step.
    pub fn write(&self, ctx: &GpuContext, pos0: u32, tokens: &[u32]) -> Result<(), KernelError> {
        let n = u32::try_from(tokens.len())
            .ok()
            .filter(|&n| n >= 1 && n <= self.max_tokens)
            .ok_or_else(|| {
                shape_error(
                    "step",
                    format!(
                        "{} tokens in one step; 1..={} allowed",
                        tokens.len(),
                        self.max_tokens
                    ),
                )
            })?;
        let head = Step {
            n_tokens: n,
            pos0,
            n_kv: pos0 + n,
            _pad: 0,
        };
        let mut bytes = self
            .bytes
            .lock()
            .map_err(|_| shape_error("step", "step buffer lock poisoned"))?;
        bytes.clear();
        bytes.extend_from_slice(bytemuck::bytes_of(&head));
        bytes.extend_from_slice(bytemuck::cast_slice(tokens));
        ctx.queue().write_buffer(&self.buffer, 0, &bytes);
        Ok(())
    }
}

/// How many workgroups a dispatch needs for a step of `n_tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// Always the same.
    Fixed([u32; 3]),
    /// `x` workgroups for each tile of `tile` tokens (y).
    Tokens { x: u32, tile: u32 },
    /// `x` workgroups for one row, whatever the step's token count.
    Once { x: u32 },
}

impl Grid {
    /// Workgroup counts, with x folded into z where it exceeds the per-dimension limit (shaders
    /// rebuild the x index as `x + z * num_workgroups.x`).
    pub fn size(&self, n_tokens: u32, max_per_dim: u32) -> [u32; 3] {
        match *self {
            Grid::Fixed(g) => g,
            Grid::Tokens { x, tile } => {
                let (x, z) = crate::gpu::grid(x, max_per_dim);
                [x, n_tokens.div_ceil(tile.max(1)).max(1), z]
            }
            Grid::Once { x } => {
                let (x, z) = crate::gpu::grid(x, max_per_dim);
                [x, 1, z]
            }
        }
    }
}

/// A compute pipeline for one shader variant.
#[derive(Debug, Clone)]
pub struct Kernel {
    name: String,
    pipeline: Arc<wgpu::ComputePipeline>,
}

impl Kernel {
    pub async fn new(ctx: &GpuContext, variant: &Variant) -> Result<Self, KernelError> {
        let source = shader_source(variant.shader)?;
        let mut name = variant.shader.to_string();
        for (k, v) in &variant.constants {
            name.push_str(&format!(" {k}={v}"));
        }
        let pipeline = ctx.pipeline(&name, &source, &variant.constants).await?;
        Ok(Kernel { name, pipeline })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A dispatch of this kernel: `params` in a uniform buffer at binding 0, then `resources`
    /// at bindings 1, 2, ... in order.
    pub fn dispatch<P: GpuParams>(
        &self,
        ctx: &GpuContext,
        params: &P,
        resources: Vec<wgpu::BindingResource<'_>>,
        grid: Grid,
    ) -> Dispatch {
        let params_buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(&self.name),
            size: std::mem::size_of::<P>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&params_buffer, 0, bytemuck::bytes_of(params));
        let layout = self.pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry<'_>> =
            std::iter::once(params_buffer.as_entire_binding())
                .chain(resources)
                .enumerate()
                .map(|(i, resource)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource,
                })
                .collect();
        let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.name),
            layout: &layout,
            entries: &entries,
        });
        Dispatch {
            pipeline: Arc::clone(&self.pipeline),
            bind_group,
            grid,
        }
    }
}

/// A pipeline, its bind group and its grid: one recorded step of a forward pass.
#[derive(Debug)]
pub struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    grid: Grid,
}

impl Dispatch {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, max_per_dim: u32) {
        let [x, y, z] = self.grid.size(n_tokens, max_per_dim);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Records `dispatches` for a step of `n_tokens` tokens into one compute pass.
pub fn encode_all<'a>(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
    n_tokens: u32,
) {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("step"),
        timestamp_writes: None,
    });
    for d in dispatches {
        d.encode(&mut pass, n_tokens, max);
    }
}

/// Checks that `buffer` holds at least `elements` 4-byte values.
pub(crate) fn check_len(
    op: &'static str,
    what: &str,
    buffer: &wgpu::Buffer,
    elements: u64,
) -> Result<(), KernelError> {
    if buffer.size() < elements * 4 {
        return Err(shape_error(
            op,
            format!(
                "{what} holds {} values, {elements} needed",
                buffer.size() / 4
            ),
        ));
    }
    Ok(())
}

/// A shader and the override constants its pipeline is built with. Each op names its variants
/// once, for building pipelines and for validating every variant without a GPU.
#[derive(Debug, Clone)]
pub struct Variant {
    pub shader: &'static str,
    pub constants: Vec<(&'static str, f64)>,
}

impl Variant {
    /// A shader whose only knob is its workgroup size.
    pub fn sized(shader: &'static str, wg_size: u32) -> Self {
        Variant {
            shader,
            constants: vec![("WG_SIZE", f64::from(wg_size))],
        }
    }
}

/// Every variant any adapter could get: the no-feature path and each feature-gated one.
pub fn all_variants() -> Vec<Variant> {
    let all = GpuFeatures {
        cpu: false,
        shader_f16: true,
        subgroups: true,
        subgroup_min_size: 4,
        subgroup_max_size: 128,
    };
    let mut v = Vec::new();
    let cpu = GpuFeatures { cpu: true, ..all };
    for features in [GpuFeatures::default(), all, cpu] {
        for dtype in WEIGHT_DTYPES {
            v.extend(embed::Embed::variants(dtype));
            v.extend(matmul::Matmul::variants(dtype, features));
        }
    }
    v.extend(rms_norm::RmsNorm::variants());
    v.extend(rope::Rope::variants());
    v.extend(attention::Attention::variants());
    v.extend(kv_store::KvStore::variants());
    v.extend(silu_mul::SiluMul::variants());
    v.extend(add::Add::variants());
    v.extend(argmax::Argmax::variants());
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(format!("{}{:?}", x.shader, x.constants)));
    v
}
