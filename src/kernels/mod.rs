//! One module per WGSL shader: its params struct, shape checks, bind group and dispatch.
//!
//! Every dispatch is built once (pipeline and bind group) and recorded into a command encoder
//! at each step; what changes per step is only the [`StepBuffer`], written with one queue write.

pub mod argmax;
pub mod attention;
pub mod cpu_products;
pub mod embed;
pub mod kv_store;
pub mod matmul;
pub mod profile;
pub mod quantize;
pub mod rms_norm;
pub mod selftest;
pub mod silu_mul;
pub mod source;

use std::sync::Arc;

use crate::format::DType;
use crate::gpu::{GpuContext, GpuError, GpuFeatures};

pub use kv_store::KvType;
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
        "{op}: weights of type {dtype} are not supported (supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
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
pub const WEIGHT_DTYPES: [DType; 10] = [
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
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
    /// The fixed head of `Step` in `shaders/common/step.wgsl`; the per-token regions and the
    /// block tables follow it.
    pub struct Step {
        pub n_tokens: u32,
        pub n_out: u32,
        pub max_tokens: u32,
        pub page_size: u32,
        pub pages_per_seq: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// How the KV pool is laid out, as the step's block tables address it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedLayout {
    /// Positions per page.
    pub page_size: u32,
    /// Block-table entries per sequence slot (the context length in pages).
    pub pages_per_seq: u32,
    /// Sequence slots (rows of the block table).
    pub max_slots: u32,
}

/// One step's tokens: what [`StepBuffer::write`] puts on the GPU.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    /// Position of each token in its sequence.
    pub positions: &'a [u32],
    /// Sequence slot of each token.
    pub slots: &'a [u32],
    /// Token rows whose logits the step computes, in output order.
    pub out_rows: &'a [u32],
    /// Block table rows: (slot, its pages in position order).
    pub tables: &'a [(u32, &'a [u32])],
}

/// Token count and output-row count of a step: what dispatch sizes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    pub n_tokens: u32,
    pub n_out: u32,
    /// Runs of consecutive tokens of one sequence: 1 for a prompt, n_tokens for a batched
    /// decode step.
    pub n_runs: u32,
    /// The most keys one of the step's tokens attends to: its position plus one.
    pub n_keys: u32,
}

impl StepShape {
    /// Whether the step's tokens come in runs long enough for the prefill attention kernel,
    /// which shares each K/V tile among a run's tokens (a batched decode step, one token per
    /// sequence, goes to the per-token kernel instead).
    pub fn long_runs(&self) -> bool {
        self.n_tokens >= 8 * self.n_runs.max(1)
    }
}

/// The per-step storage buffer: [`Step`], the per-token regions, the block tables.
#[derive(Debug)]
pub struct StepBuffer {
    buffer: wgpu::Buffer,
    max_tokens: u32,
    layout: PagedLayout,
    bytes: std::sync::Mutex<Vec<u32>>,
}

impl StepBuffer {
    pub async fn new(
        ctx: &GpuContext,
        max_tokens: u32,
        layout: PagedLayout,
    ) -> Result<Self, KernelError> {
        let words = Self::words(max_tokens.max(1), layout);
        let buffer = ctx
            .create_buffer(
                "step",
                4 * words as u64,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            )
            .await?;
        Ok(StepBuffer {
            buffer,
            max_tokens: max_tokens.max(1),
            layout,
            bytes: std::sync::Mutex::new(Vec::with_capacity(words)),
        })
    }

    fn words(max_tokens: u32, layout: PagedLayout) -> usize {
        std::mem::size_of::<Step>() / 4
            + 4 * max_tokens as usize
            + (layout.max_slots * layout.pages_per_seq) as usize
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    pub fn layout(&self) -> PagedLayout {
        self.layout
    }

    /// Writes a step: the only host-to-GPU write of a step.
    pub fn write(&self, ctx: &GpuContext, input: &StepInput<'_>) -> Result<StepShape, KernelError> {
        let err = |m: String| shape_error("step", m);
        let n = input.tokens.len();
        if n == 0 || n > self.max_tokens as usize {
            return Err(err(format!(
                "{n} tokens in one step; 1..={} allowed",
                self.max_tokens
            )));
        }
        if input.positions.len() != n || input.slots.len() != n {
            return Err(err("every token needs a position and a slot".into()));
        }
        if input.out_rows.len() > n || input.out_rows.iter().any(|&r| r as usize >= n) {
            return Err(err("output rows must be rows of the step".into()));
        }
        let l = self.layout;
        let ctx_len = u64::from(l.page_size) * u64::from(l.pages_per_seq);
        for (&slot, &pos) in input.slots.iter().zip(input.positions) {
            if slot >= l.max_slots || u64::from(pos) >= ctx_len {
                return Err(err(format!(
                    "slot {slot} position {pos} outside {} slots of {ctx_len} positions",
                    l.max_slots
                )));
            }
        }
        let max = self.max_tokens as usize;
        let mut words = self
            .bytes
            .lock()
            .map_err(|_| err("step buffer lock poisoned".into()))?;
        words.clear();
        words.resize(Self::words(self.max_tokens, l), 0);
        let head = Step {
            n_tokens: n as u32,
            n_out: input.out_rows.len() as u32,
            max_tokens: self.max_tokens,
            page_size: l.page_size,
            pages_per_seq: l.pages_per_seq,
            ..Default::default()
        };
        let h = std::mem::size_of::<Step>() / 4;
        let head: [u32; 8] = bytemuck::cast(head);
        words[..h].copy_from_slice(&head);
        words[h..h + n].copy_from_slice(input.tokens);
        words[h + max..h + max + n].copy_from_slice(input.positions);
        words[h + 2 * max..h + 2 * max + n].copy_from_slice(input.slots);
        let n_out = input.out_rows.len();
        words[h + 3 * max..h + 3 * max + n_out].copy_from_slice(input.out_rows);
        let tables = h + 4 * max;
        for (slot, pages) in input.tables {
            if *slot >= l.max_slots || pages.len() > l.pages_per_seq as usize {
                return Err(err(format!("block table of slot {slot} does not fit")));
            }
            let at = tables + (slot * l.pages_per_seq) as usize;
            words[at..at + pages.len()].copy_from_slice(pages);
        }
        // Up to the last table row in use: usually far less than the whole buffer.
        let used_slots = input.tables.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
        let end = tables + (used_slots * l.pages_per_seq) as usize;
        ctx.queue()
            .write_buffer(&self.buffer, 0, bytemuck::cast_slice(&words[..end]));
        let n_runs = 1 + input.slots.windows(2).filter(|w| w[0] != w[1]).count();
        let n_keys = input.positions.iter().max().map_or(0, |&p| p + 1);
        Ok(StepShape {
            n_tokens: n as u32,
            n_out: n_out as u32,
            n_runs: n_runs as u32,
            n_keys,
        })
    }

    /// A step of one sequence in slot 0 whose pages are 0, 1, 2, ... (the single-sequence
    /// layout), running `tokens` at positions `pos0..`, with the logits of `out_rows`.
    pub fn write_single(
        &self,
        ctx: &GpuContext,
        pos0: u32,
        tokens: &[u32],
        out_rows: &[u32],
    ) -> Result<StepShape, KernelError> {
        let positions: Vec<u32> = (pos0..pos0 + tokens.len() as u32).collect();
        let slots = vec![0; tokens.len()];
        let end = pos0 as usize + tokens.len();
        let pages: Vec<u32> = (0..end.div_ceil(self.layout.page_size as usize) as u32).collect();
        self.write(
            ctx,
            &StepInput {
                tokens,
                positions: &positions,
                slots: &slots,
                out_rows,
                tables: &[(0, &pages)],
            },
        )
    }
}

/// How many workgroups a dispatch needs for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// `x` workgroups for each tile of `tile` tokens (y).
    Tokens { x: u32, tile: u32 },
    /// `x` workgroups for each tile of `tile` output rows (y).
    Outputs { x: u32, tile: u32 },
}

impl Grid {
    /// Workgroup counts, with x folded into z where it exceeds the per-dimension limit (shaders
    /// rebuild the x index as `x + z * num_workgroups.x`).
    pub fn size(&self, shape: StepShape, max_per_dim: u32) -> [u32; 3] {
        let (x, rows, tile) = match *self {
            Grid::Tokens { x, tile } => (x, shape.n_tokens, tile),
            Grid::Outputs { x, tile } => (x, shape.n_out, tile),
        };
        let (x, z) = crate::gpu::grid(x, max_per_dim);
        [x, rows.div_ceil(tile.max(1)), z]
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
        let name = variant.name();
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
            name: Arc::from(self.name.as_str()),
            pipeline: Arc::clone(&self.pipeline),
            bind_group,
            grid,
            when: Vec::new(),
        }
    }
}

/// A pipeline, its bind group and its grid: one recorded step of a forward pass.
#[derive(Debug)]
pub struct Dispatch {
    /// The kernel's name (shader and constants), for the profile.
    name: Arc<str>,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    grid: Grid,
    /// Steps this dispatch runs in: those for which every one of these holds (all steps if
    /// there are none). It is then one of two kernels for the same output, chosen by the model
    /// (per token or batched) or by the kernel itself (one row or several).
    when: Vec<fn(&StepShape) -> bool>,
}

impl Dispatch {
    /// This dispatch, recorded only in steps for which `when` holds as well as any condition it
    /// already had.
    pub fn only_when(mut self, when: fn(&StepShape) -> bool) -> Self {
        self.when.push(when);
        self
    }

    /// The workgroup counts this dispatch runs with in a step of `shape`, or `None` when it
    /// does not run in that step.
    pub fn workgroups(&self, shape: StepShape, max_per_dim: u32) -> Option<[u32; 3]> {
        if !self.when.iter().all(|when| when(&shape)) {
            return None;
        }
        let size = self.grid.size(shape, max_per_dim);
        (!size.contains(&0)).then_some(size)
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, shape: StepShape, max_per_dim: u32) {
        let Some([x, y, z]) = self.workgroups(shape, max_per_dim) else {
            return;
        };
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Records `dispatches` for a step of the given shape into one compute pass.
pub fn encode_all<'a>(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
    shape: StepShape,
) {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("step"),
        timestamp_writes: None,
    });
    for d in dispatches {
        d.encode(&mut pass, shape, max);
    }
}

/// Encodes a step's `dispatches` after what `encoder` already holds and submits them in growing
/// parts: the first `ctx.submit_first()` dispatches that run, then twice as many each time, so
/// that the GPU runs while the host encodes the rest. Returns the last part's encoder, not yet
/// submitted, for what the step adds after its dispatches.
pub fn submit_in_parts<'a>(
    ctx: &GpuContext,
    mut encoder: wgpu::CommandEncoder,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
    shape: StepShape,
) -> wgpu::CommandEncoder {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let mut dispatches = dispatches
        .into_iter()
        .filter(|d| d.workgroups(shape, max).is_some())
        .peekable();
    let mut part = match ctx.submit_first() {
        0 => usize::MAX,
        n => n as usize,
    };
    loop {
        encode_all(ctx, &mut encoder, dispatches.by_ref().take(part), shape);
        if dispatches.peek().is_none() {
            return encoder;
        }
        ctx.queue().submit([encoder.finish()]);
        encoder = ctx.device().create_command_encoder(&Default::default());
        part = part.saturating_mul(2);
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
    /// The shader and its constants: the name of its kernel and pipeline.
    pub fn name(&self) -> String {
        let mut name = self.shader.to_string();
        for (k, v) in &self.constants {
            name.push_str(&format!(" {k}={v}"));
        }
        name
    }

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
        dot4: false,
        matvec_split: false,
        coop_matrix: false,
        coop_fragment: 0,
        matmul_tiles: None,
        cpu_broadcast: false,
    };
    let all_dot4 = GpuFeatures { dot4: true, ..all };
    let all_split = GpuFeatures {
        matvec_split: true,
        ..all
    };
    // The 8-bit decode products ignore the split; their variants must still build.
    let all_dot4_split = GpuFeatures {
        matvec_split: true,
        ..all_dot4
    };
    let coop = GpuFeatures {
        coop_matrix: true,
        coop_fragment: 16,
        subgroup_min_size: 32,
        subgroup_max_size: 32,
        ..all
    };
    let coop8 = GpuFeatures {
        coop_fragment: 8,
        subgroup_min_size: 8,
        subgroup_max_size: 8,
        ..coop
    };
    let mut v = Vec::new();
    // CPU adapters: with subgroups wide enough to share activation loads, and without.
    let cpu = GpuFeatures {
        cpu: true,
        subgroup_min_size: 8,
        subgroup_max_size: 8,
        cpu_broadcast: true,
        ..all
    };
    let cpu_4_lanes = GpuFeatures {
        subgroup_min_size: 4,
        subgroup_max_size: 4,
        ..cpu
    };
    let cpu_plain = GpuFeatures {
        cpu: true,
        ..GpuFeatures::default()
    };
    let cpu_dot4 = GpuFeatures {
        dot4: true,
        ..cpu_plain
    };
    for features in [
        GpuFeatures::default(),
        all,
        all_dot4,
        all_split,
        all_dot4_split,
        coop,
        coop8,
        cpu,
        cpu_4_lanes,
        cpu_plain,
        cpu_dot4,
    ] {
        for dtype in WEIGHT_DTYPES {
            v.extend(embed::Embed::variants(dtype));
            v.extend(matmul::Matmul::variants(dtype, features));
        }
    }
    v.extend(rms_norm::RmsNorm::variants());
    v.extend(attention::Attention::variants());
    v.extend(kv_store::KvStore::variants());
    v.extend(silu_mul::SiluMul::variants());
    v.extend(argmax::Argmax::variants());
    v.extend(quantize::QuantizeQ8::variants());
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(format!("{}{:?}", x.shader, x.constants)));
    v
}
