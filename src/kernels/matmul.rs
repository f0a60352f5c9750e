//! `y = x W^T` with W in its GGUF block layout, dequantized in the shader. Four shaders:
//! `matvec.wgsl` (decode, reduction in workgroup memory, or one row per invocation on CPU
//! adapters), `matvec_subgroup.wgsl` (decode, reduction with subgroupAdd, where the adapter has
//! subgroups), `matmul.wgsl` (prefill, tiled through workgroup memory) and `matmul_rowwise.wgsl`
//! (every step on CPU adapters: four rows and a tile of tokens per invocation, or one token in
//! the pipeline that steps of one row run), with `matmul_rowwise_subgroup.wgsl` its variant that
//! shares activation loads across lanes.
//! Where `GpuFeatures::dot4` is set, Q4_0, Q4_1 and Q8_0 decode and rowwise products run their
//! `_q8` variants instead: x is first quantized to two 8-bit planes (`quantize_q8.wgsl`) and
//! multiplied with packed 4x8 integer dot products (`common/q8_dot.wgsl`).

use super::quantize::{QuantizeQ8, q8_len};
use super::{
    Dispatch, Grid, Kernel, KernelError, StepShape, Variant, check_len, check_weight_dtype,
    shape_error,
};
use crate::format::DType;
use crate::gpu::{GpuContext, GpuFeatures, WeightTensor};

crate::gpu_params! {
    pub struct MatmulParams {
        pub n_in: u32,
        pub n_out: u32,
        pub row_bytes: u32,
        pub out_col0: u32,
        pub x_stride: u32,
        pub y_stride: u32,
        pub out_rows: u32,
        pub accumulate: u32,
    }
}

const MATVEC_WG: u32 = 64;
const MATVEC_ROW_THREADS: u32 = 16;
/// Rows per workgroup in `common/matvec_subgroup.wgsl` (a const there).
const MATVEC_SUBGROUP_ROWS: u32 = 4;
/// Lanes per 32-weight chunk in `common/matvec_x_f32.wgsl` with `GpuFeatures::matvec_split`.
const MATVEC_SPLIT_LANES: u32 = 4;
/// Smallest workgroup of the subgroup matrix-vector kernels.
const MATVEC_SUBGROUP_WG: u32 = 128;
/// Tokens per workgroup in `matvec_subgroup_batch.wgsl` (a const there).
const MATVEC_BATCH_TOKENS: u32 = 8;
/// Prefill tiles on GPUs: the best of eight shapes for pp512 and pp16 together on an H100
/// (benches/RESULTS.md); `GpuOptions::matmul_tiles` overrides them.
const TILE_M: u32 = 64;
const TILE_N: u32 = 64;
const TILE_K: u32 = 32;
const ROWWISE_WG: u32 = 64;
/// Weight rows and tokens per invocation in `common/matmul_rowwise.wgsl` (consts there).
const ROWWISE_ROWS: u32 = 4;
/// Weight rows per invocation in `matmul_rowwise.wgsl` (no subgroups): two sets of ROWS, so each
/// activation block, which every lane loads for itself there, serves twice the rows. Its
/// workgroups have half the lanes, so that a workgroup still covers ROWWISE_WG * ROWWISE_ROWS
/// rows: a CPU adapter runs a workgroup on one core, and larger ones left a core idle on
/// products of a few hundred rows.
const ROWWISE_PLAIN_ROWS: u32 = 2 * ROWWISE_ROWS;
const ROWWISE_PLAIN_WG: u32 = ROWWISE_WG / 2;
const ROWWISE_TOKENS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Rows per workgroup as the host counts them.
    Vector {
        rows_per_wg: u32,
        tokens_per_wg: u32,
    },
    Tiled {
        tile_m: u32,
        tile_n: u32,
    },
    /// Weight rows per workgroup.
    Rowwise {
        rows_per_wg: u32,
    },
}

/// Where x comes from and where y goes.
#[derive(Debug, Clone, Copy)]
pub struct MatmulLayout {
    /// Elements between rows of x and of y.
    pub x_stride: u32,
    pub y_stride: u32,
    /// Rows x and y hold.
    pub x_rows: u32,
    pub y_rows: u32,
    /// Output column of the weight's first row.
    pub y_col0: u32,
    /// The rows are the step's output rows (n_out, the logits), not its tokens.
    pub out_rows: bool,
    /// Add the product to y instead of overwriting it (a residual add folded in).
    pub accumulate: bool,
}

impl MatmulLayout {
    /// `rows` rows of x and y, one per token, y overwritten from its first column.
    pub fn rows(x_stride: u32, y_stride: u32, rows: u32) -> Self {
        MatmulLayout {
            x_stride,
            y_stride,
            x_rows: rows,
            y_rows: rows,
            y_col0: 0,
            out_rows: false,
            accumulate: false,
        }
    }
}

/// The three kernel families of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Decode: [`Matmul::vector`].
    Vector,
    /// Batched decode: [`Matmul::vector_batch`].
    VectorBatch,
    /// Prefill: [`Matmul::tiled`].
    Tiled,
}

pub struct Matmul {
    kernel: Kernel,
    /// The rowwise products' pipeline for steps of one row (`ONE_TOKEN` in
    /// `common/matmul_rowwise.wgsl`): `kernel` then serves the steps of several.
    one_row: Option<Kernel>,
    dtype: DType,
    shape: Shape,
    /// Gated: the weight is a gate and an up projection joined by rows, and y gets
    /// silu(gate) * up (see [`Matmul::gated`]).
    glu: bool,
    /// Set where the kernel reads x quantized to 8 bits: the pass that quantizes it.
    quantize: Option<QuantizeQ8>,
    /// The kernel rounds weights and activations to f16 before multiplying (the matrix units').
    f16_inputs: bool,
    /// Built for steps of one token only ([`Matmul::cpu_gated_one_token`]): binds one row.
    one_token_only: bool,
}

/// The products that read activations quantized to 8-bit planes (`quantize_q8.wgsl`).
const Q8_SHADERS: [&str; 3] = [
    "matmul_rowwise_q8",
    "matvec_subgroup_q8",
    "matvec_subgroup_batch_q8",
];

/// Whether a variant's product reads activations quantized to 8-bit planes.
fn reads_q8(variant: &Variant) -> bool {
    Q8_SHADERS.contains(&variant.shader)
}

/// The pipeline a rowwise product runs for a step of one row, where each row block is
/// dequantized as it meets the token's activations instead of once for a tile of tokens.
fn one_row_variant(variant: &Variant, shape: Shape) -> Option<Variant> {
    matches!(shape, Shape::Rowwise { .. }).then(|| {
        let mut one = variant.clone();
        one.constants.push(("ONE_TOKEN", 1.0));
        one
    })
}

fn one_token(s: &StepShape) -> bool {
    s.n_tokens == 1
}

fn several_tokens(s: &StepShape) -> bool {
    !one_token(s)
}

fn one_out_row(s: &StepShape) -> bool {
    s.n_out == 1
}

fn several_out_rows(s: &StepShape) -> bool {
    !one_out_row(s)
}

/// Weight types with a product against 8-bit activations (`common/q8_dot.wgsl`).
fn has_q8_product(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0)
}

impl Matmul {
    async fn build(
        ctx: &GpuContext,
        variant: &Variant,
        dtype: DType,
        shape: Shape,
        glu: bool,
    ) -> Result<Self, KernelError> {
        let quantize = if reads_q8(variant) {
            Some(QuantizeQ8::new(ctx).await?)
        } else {
            None
        };
        let one_row = match one_row_variant(variant, shape) {
            Some(v) => Some(Kernel::new(ctx, &v).await?),
            None => None,
        };
        Ok(Matmul {
            kernel: Kernel::new(ctx, variant).await?,
            one_row,
            dtype,
            shape,
            glu,
            quantize,
            f16_inputs: variant.shader.starts_with("matmul_coop"),
            one_token_only: false,
        })
    }

    /// Whether the kernel multiplies weights and activations rounded to f16 (with f32 sums).
    pub fn rounds_to_f16(&self) -> bool {
        self.f16_inputs
    }

    /// Whether a step of one row (one token, or one output row) runs a pipeline of its own.
    pub fn has_one_row_kernel(&self) -> bool {
        self.one_row.is_some()
    }

    /// Whether [`Matmul::bind_with_scratch`] quantizes x into a scratch buffer first.
    pub fn reads_q8(&self) -> bool {
        self.quantize.is_some()
    }

    fn vector_spec(dtype: DType, features: GpuFeatures) -> (Variant, Shape) {
        let w = ("W_DTYPE", f64::from(dtype.ggml_id()));
        if features.cpu {
            // The prefill kernel serves one token as well (one row per lane, no barriers), and
            // using it for every step makes a row's sum the same whether a sequence runs alone
            // or batched with others.
            Self::tiled_spec(dtype, features)
        } else if features.subgroups {
            Self::subgroup_spec("matvec_subgroup", 1, dtype, features, false)
        } else {
            (
                Variant {
                    shader: "matvec",
                    constants: vec![
                        w,
                        ("WG_SIZE", f64::from(MATVEC_WG)),
                        ("ROW_THREADS", f64::from(MATVEC_ROW_THREADS)),
                    ],
                },
                Shape::Vector {
                    rows_per_wg: MATVEC_WG / MATVEC_ROW_THREADS,
                    tokens_per_wg: 1,
                },
            )
        }
    }

    fn subgroup_spec(
        shader: &'static str,
        tokens_per_wg: u32,
        dtype: DType,
        features: GpuFeatures,
        glu: bool,
    ) -> (Variant, Shape) {
        // A row's K is spread over the whole workgroup: four subgroups of 32 on most GPUs, and
        // always a whole number of the adapter's largest subgroups.
        let wg = features
            .subgroup_max_size
            .clamp(32, 256)
            .next_power_of_two()
            .max(MATVEC_SUBGROUP_WG);
        let max_subgroups = wg / features.subgroup_min_size.clamp(1, wg);
        let shader = match shader {
            "matvec_subgroup" if features.dot4 && has_q8_product(dtype) => "matvec_subgroup_q8",
            "matvec_subgroup_batch" if features.dot4 && has_q8_product(dtype) => {
                "matvec_subgroup_batch_q8"
            }
            other => other,
        };
        let mut constants = vec![
            ("W_DTYPE", f64::from(dtype.ggml_id())),
            ("WG_SIZE", f64::from(wg)),
            ("MAX_SUBGROUPS", f64::from(max_subgroups)),
        ];
        if glu {
            constants.push(("GLU", 1.0));
        }
        // The 8-bit products keep one lane per chunk (a const in their shaders): their block
        // dot takes a whole activation block.
        if features.matvec_split && !Q8_SHADERS.contains(&shader) {
            constants.push(("CHUNK_LANES", f64::from(MATVEC_SPLIT_LANES)));
        }
        (
            Variant { shader, constants },
            Shape::Vector {
                // Outputs per workgroup: a gated one takes a gate and an up row per output.
                rows_per_wg: if glu {
                    MATVEC_SUBGROUP_ROWS / 2
                } else {
                    MATVEC_SUBGROUP_ROWS
                },
                tokens_per_wg,
            },
        )
    }

    /// The batched decode kernel where the adapter has one: a GPU with subgroups.
    fn batch_spec(dtype: DType, features: GpuFeatures, glu: bool) -> Option<(Variant, Shape)> {
        (!features.cpu && features.subgroups).then(|| {
            Self::subgroup_spec(
                "matvec_subgroup_batch",
                MATVEC_BATCH_TOKENS,
                dtype,
                features,
                glu,
            )
        })
    }

    /// The gated decode kernels, per token or batched, where the adapter has them: those of a
    /// GPU with subgroups.
    fn gated_spec(
        kind: MatmulKernel,
        dtype: DType,
        features: GpuFeatures,
    ) -> Option<(Variant, Shape)> {
        if features.cpu && kind != MatmulKernel::VectorBatch {
            // The rowwise products serve every step there, prefill too; the 8-bit one is not
            // gated.
            let (mut variant, shape) = Self::tiled_spec(dtype, features);
            return (!reads_q8(&variant)).then(|| {
                variant.constants.push(("GLU", 1.0));
                (variant, shape)
            });
        }
        match kind {
            MatmulKernel::Vector => (!features.cpu && features.subgroups)
                .then(|| Self::subgroup_spec("matvec_subgroup", 1, dtype, features, true)),
            MatmulKernel::VectorBatch => Self::batch_spec(dtype, features, true),
            MatmulKernel::Tiled => None,
        }
    }

    fn tiled_spec(dtype: DType, features: GpuFeatures) -> (Variant, Shape) {
        let w = ("W_DTYPE", f64::from(dtype.ggml_id()));
        if features.cpu {
            // An activation block is broadcast from eight lanes, or four where subgroups are
            // that small; without the broadcasts each lane loads it for twice the rows.
            let four_rows = (ROWWISE_WG, ROWWISE_ROWS);
            let (shader, spread, (lanes, rows)) = match features.subgroup_min_size {
                _ if features.dot4 && has_q8_product(dtype) => {
                    ("matmul_rowwise_q8", None, four_rows)
                }
                8.. if features.cpu_broadcast => ("matmul_rowwise_subgroup", Some(8.0), four_rows),
                4.. if features.cpu_broadcast => ("matmul_rowwise_subgroup", Some(4.0), four_rows),
                _ => (
                    "matmul_rowwise",
                    None,
                    (ROWWISE_PLAIN_WG, ROWWISE_PLAIN_ROWS),
                ),
            };
            let mut constants = vec![w, ("WG_SIZE", f64::from(lanes))];
            constants.extend(spread.map(|s| ("SPREAD", s)));
            (
                Variant { shader, constants },
                Shape::Rowwise {
                    rows_per_wg: lanes * rows,
                },
            )
        } else if features.coop_matrix {
            // 16x16x16 fragments unless the adapter has only 8x8x8 ones; tokens and output
            // features per workgroup: four fragments each way (common/matmul_coop.wgsl).
            let (shader, fragment) = match features.coop_fragment {
                8 => ("matmul_coop8", 8),
                _ => ("matmul_coop", 16),
            };
            let tile = 4 * fragment;
            (
                Variant {
                    shader,
                    constants: vec![
                        w,
                        // Four subgroups; the adapter's subgroups are all this size.
                        ("WG_SIZE", f64::from(4 * features.subgroup_max_size)),
                    ],
                },
                Shape::Tiled {
                    tile_m: tile,
                    tile_n: tile,
                },
            )
        } else {
            let [tile_m, tile_n, tile_k] =
                features.matmul_tiles.unwrap_or([TILE_M, TILE_N, TILE_K]);
            (
                Variant {
                    shader: "matmul",
                    constants: vec![
                        w,
                        ("TILE_M", f64::from(tile_m)),
                        ("TILE_N", f64::from(tile_n)),
                        ("TILE_K", f64::from(tile_k)),
                    ],
                },
                Shape::Tiled { tile_m, tile_n },
            )
        }
    }

    pub fn variants(dtype: DType, features: GpuFeatures) -> Vec<Variant> {
        let mut v = Vec::new();
        for (variant, shape) in [
            Self::vector_spec(dtype, features),
            Self::tiled_spec(dtype, features),
        ] {
            v.extend(one_row_variant(&variant, shape));
            v.push(variant);
        }
        v.extend(Self::batch_spec(dtype, features, false).map(|(variant, _)| variant));
        for kind in [MatmulKernel::Vector, MatmulKernel::VectorBatch] {
            if let Some((variant, shape)) = Self::gated_spec(kind, dtype, features) {
                v.extend(one_row_variant(&variant, shape));
                v.push(variant);
            }
        }
        v
    }

    /// The decode kernel: one or a few tokens, each weight row read once per token.
    pub async fn vector(ctx: &GpuContext, dtype: DType) -> Result<Self, KernelError> {
        check_weight_dtype("matvec", dtype)?;
        let (variant, shape) = Self::vector_spec(dtype, ctx.features());
        Self::build(ctx, &variant, dtype, shape, false).await
    }

    /// [`Matmul::gated`]'s CPU rowwise product for steps of one token, with the subgroup
    /// broadcasts or without, whichever the context has chosen (`cpu_products` measures both):
    /// the variant of its one-token pipeline, and its shape. `None` where there is no such
    /// product.
    pub(crate) fn cpu_gated_one_token_spec(
        features: GpuFeatures,
        dtype: DType,
        broadcast: bool,
    ) -> Option<(Variant, Shape)> {
        let features = GpuFeatures {
            cpu_broadcast: broadcast,
            ..features
        };
        let (variant, shape) = Self::gated_spec(MatmulKernel::Vector, dtype, features)?;
        one_row_variant(&variant, shape).map(|one| (one, shape))
    }

    /// The product of [`Matmul::cpu_gated_one_token_spec`]: only its one-token pipeline is
    /// built, and it binds x and y of one row only.
    pub(crate) async fn cpu_gated_one_token(
        ctx: &GpuContext,
        dtype: DType,
        (variant, shape): (Variant, Shape),
    ) -> Result<Self, KernelError> {
        check_weight_dtype("matvec", dtype)?;
        let kernel = Kernel::new(ctx, &variant).await?;
        Ok(Matmul {
            kernel: kernel.clone(),
            one_row: Some(kernel),
            dtype,
            shape,
            glu: true,
            quantize: None,
            f16_inputs: false,
            one_token_only: true,
        })
    }

    /// Whether `features` give a batched decode kernel.
    pub fn has_batch(features: GpuFeatures) -> bool {
        Self::batch_spec(DType::F32, features, false).is_some()
    }

    /// The kernel of `kind`; `None` only for [`MatmulKernel::VectorBatch`] where the adapter has
    /// none.
    pub async fn of_kind(
        ctx: &GpuContext,
        kind: MatmulKernel,
        dtype: DType,
    ) -> Result<Option<Self>, KernelError> {
        match kind {
            MatmulKernel::Vector => Self::vector(ctx, dtype).await.map(Some),
            MatmulKernel::VectorBatch => Self::vector_batch(ctx, dtype).await,
            MatmulKernel::Tiled => Self::tiled(ctx, dtype).await.map(Some),
        }
    }

    /// The batched decode kernel (a token from each of several sequences): eight tokens share
    /// each trip of a weight row from memory. `None` where the adapter has no such kernel (CPU
    /// adapters, or no subgroups); [`Matmul::vector`] serves such steps there.
    pub async fn vector_batch(ctx: &GpuContext, dtype: DType) -> Result<Option<Self>, KernelError> {
        check_weight_dtype("matvec", dtype)?;
        let Some((variant, shape)) = Self::batch_spec(dtype, ctx.features(), false) else {
            return Ok(None);
        };
        Self::build(ctx, &variant, dtype, shape, false)
            .await
            .map(Some)
    }

    /// The prefill kernel: tiles of tokens share each dequantized weight tile.
    pub async fn tiled(ctx: &GpuContext, dtype: DType) -> Result<Self, KernelError> {
        check_weight_dtype("matmul", dtype)?;
        let (variant, shape) = Self::tiled_spec(dtype, ctx.features());
        Self::build(ctx, &variant, dtype, shape, false).await
    }

    /// The kernel of `kind` for a gated product: `w` holds a gate projection's n rows, then an
    /// up projection's, in one buffer, and `y[t, col0 + r] = silu(x[t] . w[r]) * (x[t] . w[n + r])`.
    /// One dispatch does what two products and `SiluMul` do, without writing and reading back
    /// both halves. GPUs with subgroups have gated decode kernels (per token and batched); CPU
    /// adapters have gated rowwise products, which serve every step, except with 8-bit
    /// activations. `None` elsewhere.
    pub async fn gated(
        ctx: &GpuContext,
        kind: MatmulKernel,
        dtype: DType,
    ) -> Result<Option<Self>, KernelError> {
        check_weight_dtype("matvec", dtype)?;
        let Some((variant, shape)) = Self::gated_spec(kind, dtype, ctx.features()) else {
            return Ok(None);
        };
        Self::build(ctx, &variant, dtype, shape, true)
            .await
            .map(Some)
    }

    /// One dispatch per buffer of `w` (n_out, n_in): `y[t, col0 + r] = x[t] . w[r]`; a gated
    /// kernel's is described at [`Matmul::gated`]. A kernel that reads 8-bit activations
    /// quantizes x first, into a buffer of its own.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        w: &WeightTensor,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        layout: MatmulLayout,
    ) -> Result<Vec<Dispatch>, KernelError> {
        self.bind_with_scratch(ctx, step, w, x, y, layout, None)
    }

    /// Bytes of the scratch buffer a kernel that reads 8-bit activations needs for x's rows.
    pub fn scratch_len(n_in: u32, x_rows: u32) -> u64 {
        q8_len(x_rows, n_in)
    }

    /// As [`Matmul::bind`], with the 8-bit activations (if the kernel reads them) in
    /// `scratch`, at least [`Matmul::scratch_len`] bytes, which products that run one after
    /// another can share.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_with_scratch(
        &self,
        ctx: &GpuContext,
        step: &wgpu::Buffer,
        w: &WeightTensor,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        layout: MatmulLayout,
        scratch: Option<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>, KernelError> {
        let op = "matmul";
        if self.one_token_only && (layout.x_rows != 1 || layout.y_rows != 1) {
            return Err(shape_error(
                op,
                "a product built for one token binds x and y of one row",
            ));
        }
        if w.dtype != self.dtype {
            return Err(shape_error(
                op,
                format!("{} is {}, kernel built for {}", w.name, w.dtype, self.dtype),
            ));
        }
        if !w.row_len.is_multiple_of(4) {
            return Err(shape_error(
                op,
                format!(
                    "{}: row length {} is not a multiple of 4",
                    w.name, w.row_len
                ),
            ));
        }
        if !layout.x_stride.is_multiple_of(4) {
            return Err(shape_error(
                op,
                format!("x row stride {} is not a multiple of 4", layout.x_stride),
            ));
        }
        if layout.x_stride < w.row_len {
            return Err(shape_error(
                op,
                format!(
                    "{}: x rows of {} hold fewer than {} inputs",
                    w.name, layout.x_stride, w.row_len
                ),
            ));
        }
        let n_outputs = if self.glu {
            // Gate row r and up row n + r meet in one workgroup: they must share a buffer.
            if w.chunks.len() != 1 || !w.n_rows.is_multiple_of(2) || layout.accumulate {
                return Err(shape_error(
                    op,
                    format!(
                        "{}: a gated product needs an even number of rows in one buffer \
                         ({} rows in {}) and cannot accumulate",
                        w.name,
                        w.n_rows,
                        w.chunks.len()
                    ),
                ));
            }
            w.n_rows / 2
        } else {
            w.n_rows
        };
        if layout.y_col0 + n_outputs > layout.y_stride {
            return Err(shape_error(
                op,
                format!(
                    "{}: {} outputs from column {} overflow y rows of {}",
                    w.name, n_outputs, layout.y_col0, layout.y_stride
                ),
            ));
        }
        check_len(
            op,
            "x",
            x,
            u64::from(layout.x_rows) * u64::from(layout.x_stride),
        )?;
        check_len(
            op,
            "y",
            y,
            u64::from(layout.y_rows) * u64::from(layout.y_stride),
        )?;
        let mut dispatches = Vec::new();
        let own_scratch;
        let x = match &self.quantize {
            Some(quantize) => {
                let xq = match scratch {
                    Some(xq) => xq,
                    None => {
                        own_scratch = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                            label: Some("xq"),
                            size: q8_len(layout.x_rows, w.row_len).max(16),
                            usage: wgpu::BufferUsages::STORAGE,
                            mapped_at_creation: false,
                        });
                        &own_scratch
                    }
                };
                dispatches.push(quantize.bind(
                    ctx,
                    step,
                    x,
                    xq,
                    w.row_len,
                    layout.x_stride,
                    layout.x_rows,
                    layout.out_rows,
                )?);
                xq
            }
            None => x,
        };
        for chunk in &w.chunks {
            let params = MatmulParams {
                n_in: w.row_len,
                n_out: chunk.n_rows,
                row_bytes: w.row_bytes as u32,
                out_col0: layout.y_col0 + chunk.first_row,
                x_stride: layout.x_stride,
                y_stride: layout.y_stride,
                out_rows: u32::from(layout.out_rows),
                accumulate: u32::from(layout.accumulate),
            };
            let (groups, tile) = match self.shape {
                Shape::Vector {
                    rows_per_wg,
                    tokens_per_wg,
                } => {
                    let outputs = if self.glu {
                        chunk.n_rows / 2
                    } else {
                        chunk.n_rows
                    };
                    (outputs.div_ceil(rows_per_wg), tokens_per_wg)
                }
                Shape::Tiled { tile_m, tile_n } => (chunk.n_rows.div_ceil(tile_n), tile_m),
                Shape::Rowwise { rows_per_wg } => {
                    (chunk.n_rows.div_ceil(rows_per_wg), ROWWISE_TOKENS)
                }
            };
            let grid = |tile| {
                if layout.out_rows {
                    Grid::Outputs { x: groups, tile }
                } else {
                    Grid::Tokens { x: groups, tile }
                }
            };
            let resources = || {
                vec![
                    step.as_entire_binding(),
                    chunk.buffer.as_entire_binding(),
                    x.as_entire_binding(),
                    y.as_entire_binding(),
                ]
            };
            let dispatch = self.kernel.dispatch(ctx, &params, resources(), grid(tile));
            match &self.one_row {
                Some(one_row) => {
                    type When = fn(&StepShape) -> bool;
                    let (one, several): (When, When) = if layout.out_rows {
                        (one_out_row, several_out_rows)
                    } else {
                        (one_token, several_tokens)
                    };
                    dispatches.push(dispatch.only_when(several));
                    dispatches.push(
                        one_row
                            .dispatch(ctx, &params, resources(), grid(1))
                            .only_when(one),
                    );
                }
                None => dispatches.push(dispatch),
            }
        }
        Ok(dispatches)
    }
}
