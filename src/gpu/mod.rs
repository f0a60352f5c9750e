//! The GPU context: adapter choice, device with the adapter's own limits, optional features,
//! error capture, buffers and pipelines.

pub mod buffer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub use buffer::{ReadbackBuffer, WeightChunk, WeightTensor};

/// Errors from the GPU layer.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter found (on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
    )]
    NoAdapter,
    #[error("no adapter matches {wanted:?}; available: {available}")]
    AdapterNotFound { wanted: String, available: String },
    #[error("could not open a device on {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("GPU out of memory while {what}")]
    OutOfMemory { what: String },
    #[error("GPU validation error while {what}: {message}")]
    Validation { what: String, message: String },
    #[error("GPU internal error while {what}: {message}")]
    Internal { what: String, message: String },
    #[error("GPU error: {0}")]
    Uncaptured(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("could not read back a GPU buffer: {0}")]
    Map(String),
    #[error("{what} needs {needed} bytes in one binding; this adapter allows {limit}")]
    BindingTooLarge {
        what: String,
        needed: u64,
        limit: u64,
    },
}

/// How to choose and configure the adapter. Unset fields keep the adapter's own choices.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// An adapter index (as `sovereign devices` lists them) or a case-insensitive part of its
    /// name. `None`: the high-performance adapter.
    pub adapter: Option<String>,
    /// Caps the storage binding size below the adapter's limit: tensors larger than the cap are
    /// split across bindings. Lets tests exercise splitting on any adapter.
    pub max_binding_size: Option<u64>,
    /// Do not use shader-f16 even where the adapter has it.
    pub disable_f16: bool,
    /// Do not use subgroup operations even where the adapter has them.
    pub disable_subgroups: bool,
    /// Multiply Q4_0, Q4_1 and Q8_0 weights with activations quantized to 8-bit planes through
    /// packed 4x8 integer dot products (`SOVEREIGN_DOT4`). Off by default: slower than the f32
    /// kernels on lavapipe and SwiftShader, and not yet measured on a GPU
    /// (benches/RESULTS.md).
    pub dot4: bool,
    /// Spread each 32-weight chunk of the GPU decode products (f32 activations) over four lanes
    /// instead of one (`SOVEREIGN_MATVEC_SPLIT`), so that a subgroup's loads of x and of the
    /// weights cover contiguous spans rather than a 128-byte line per lane. Off by
    /// default until a GPU has measured it against the default (benches/RESULTS.md).
    pub matvec_split: bool,
    /// Prefill products on the GPU's matrix units through wgpu's experimental cooperative
    /// matrices (`SOVEREIGN_COOP_MATRIX`), where the driver lists 16x16x16 or 8x8x8 f16
    /// matrices with f32 sums and the adapter has shader-f16 and subgroups of one fixed size.
    /// A CPU adapter that has them (lavapipe since Mesa 26) uses them only with the GPU-shaped
    /// kernels (`gpu_kernels_on_cpu`): its own products are rowwise. Off by default until a GPU
    /// has run its tests and benchmarks (benches/RESULTS.md).
    pub coop_matrix: bool,
    /// Tile sizes (tokens, output features, K per step) of the prefill matmul instead of the
    /// built-in ones, for tuning on a new adapter (`SOVEREIGN_MATMUL_TILES=32,64,32`).
    pub matmul_tiles: Option<[u32; 3]>,
    /// Which runtime checks wgpu compiles into the shaders (`SOVEREIGN_SHADER_CHECKS`).
    pub shader_checks: ShaderChecks,
    /// Use the kernel shapes meant for GPUs even on a CPU adapter, so that tests on lavapipe
    /// cover every variant.
    pub gpu_kernels_on_cpu: bool,
    /// Whether the adapter runs shaders on the CPU, when the caller knows better than the
    /// adapter says: a browser reports no device type (only fallback adapters count as CPU),
    /// but the page can read SwiftShader's name from the adapter's info. `None`: as reported.
    pub cpu_adapter: Option<bool>,
    /// On the web: the page asked for WebGPU's `subgroups` feature when the device was
    /// requested, which wgpu's web backend can neither ask for nor report.
    pub page_subgroups: bool,
    /// Treat the adapter's smallest subgroups as this many lanes when it reports more, so that
    /// tests on an adapter with 8-lane subgroups cover the kernels chosen for 4-lane ones.
    pub subgroup_min_size: Option<u32>,
    /// Dispatches in a step's first command buffer (`SOVEREIGN_SUBMIT_FIRST`); 0 submits each
    /// step whole. `None`: [`DEFAULT_SUBMIT_FIRST`].
    pub submit_first: Option<u32>,
    /// Which rowwise products a CPU adapter with subgroups runs (`SOVEREIGN_CPU_PRODUCTS`).
    pub cpu_products: CpuProducts,
    /// Where measured choices of [`CpuProducts`] are kept between runs (`cpu-products.json` in
    /// the cache folder, from [`GpuOptions::from_env`]): a later load on the same adapter,
    /// driver and kernels reads the choice instead of measuring again. `None`: not kept.
    pub cpu_products_file: Option<std::path::PathBuf>,
}

/// The two rowwise products of a CPU adapter with subgroups: each lane loads every activation
/// block itself (`matmul_rowwise`), or lanes share the loads through subgroup broadcasts
/// (`matmul_rowwise_subgroup`). Which is faster depends on the driver: the broadcasts by 1.1x on
/// Mesa 22.3's lavapipe and 1.4x on Mesa 25 with LLVM 19, the plain loads by 1.24x on Mesa 26
/// (benches/RESULTS.md). Both compute the same floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuProducts {
    /// The broadcasts until a model loads, then whichever of the two the loader measured
    /// faster on its weights (`kernels::cpu_products`), or found measured before.
    #[default]
    Measure,
    Broadcast,
    Plain,
}

impl CpuProducts {
    /// `measure`, `broadcast` or `plain`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "measure" => Some(CpuProducts::Measure),
            "broadcast" => Some(CpuProducts::Broadcast),
            "plain" => Some(CpuProducts::Plain),
            _ => None,
        }
    }
}

/// Dispatches in a step's first command buffer; each later one takes twice as many. The GPU
/// starts on the first while the host encodes the next, so most of a step's encoding hides
/// behind its GPU time instead of adding to it.
pub const DEFAULT_SUBMIT_FIRST: u32 = 16;

impl GpuOptions {
    /// Options from the `SOVEREIGN_*` variables each field names.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let flag = |k: &str| var(k).is_some_and(|v| v != "0");
        GpuOptions {
            adapter: var("SOVEREIGN_ADAPTER"),
            max_binding_size: var("SOVEREIGN_MAX_BINDING").and_then(|v| v.parse().ok()),
            disable_f16: flag("SOVEREIGN_NO_F16"),
            disable_subgroups: flag("SOVEREIGN_NO_SUBGROUPS"),
            dot4: flag("SOVEREIGN_DOT4"),
            matvec_split: flag("SOVEREIGN_MATVEC_SPLIT"),
            coop_matrix: flag("SOVEREIGN_COOP_MATRIX"),
            gpu_kernels_on_cpu: flag("SOVEREIGN_GPU_KERNELS"),
            matmul_tiles: var("SOVEREIGN_MATMUL_TILES").and_then(|v| parse_tiles(&v)),
            shader_checks: named(
                "SOVEREIGN_SHADER_CHECKS",
                ShaderChecks::from_name,
                "full or no-loop-bound",
            ),
            cpu_adapter: None,
            page_subgroups: false,
            subgroup_min_size: None,
            submit_first: var("SOVEREIGN_SUBMIT_FIRST").and_then(|v| v.parse().ok()),
            cpu_products: named(
                "SOVEREIGN_CPU_PRODUCTS",
                CpuProducts::from_name,
                "measure, broadcast or plain",
            ),
            cpu_products_file: cpu_products_file(),
        }
    }
}

/// The setting a variable names, its default where it is unset, and a warning where it names
/// none of those `wanted`.
fn named<T: Default>(key: &str, from_name: fn(&str) -> Option<T>, wanted: &str) -> T {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| {
            let setting = from_name(&v);
            if setting.is_none() {
                tracing::warn!("{key}={v:?} ignored: want {wanted}");
            }
            setting
        })
        .unwrap_or_default()
}

#[cfg(feature = "native")]
fn cpu_products_file() -> Option<std::path::PathBuf> {
    crate::fetch::cache_dir()
        .ok()
        .map(|dir| dir.join("cpu-products.json"))
}

#[cfg(not(feature = "native"))]
fn cpu_products_file() -> Option<std::path::PathBuf> {
    None
}

/// `M,N,K` tile sizes: multiples of 4, at most 1024 threads ((M/4)(N/4)) and 32 KiB of tiles.
fn parse_tiles(v: &str) -> Option<[u32; 3]> {
    let t: Vec<u32> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    let ok = t.len() == 3
        && t.iter().all(|&x| x >= 4 && x.is_multiple_of(4))
        && (t[0] / 4) * (t[1] / 4) <= 1024
        && (t[0] + t[1]) * t[2] * 4 <= 32 * 1024;
    if !ok {
        tracing::warn!("SOVEREIGN_MATMUL_TILES={v:?} ignored: want M,N,K, multiples of 4");
        return None;
    }
    Some([t[0], t[1], t[2]])
}

/// The runtime checks wgpu adds to every shader. Bounds checks keep each access inside its
/// binding; the loop bound adds a counter to every loop so that no loop can run forever, which
/// also keeps the driver's compiler from unrolling the kernels' fixed-count inner loops.
///
/// The default drops the loop bound: on an H100 it made prefill 8x and decode 1.2x faster (see
/// benches/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShaderChecks {
    /// Every check wgpu offers.
    Full,
    /// Every check but the loop bound: each of the engine's loops is bounded by its own
    /// parameters, which the host validates.
    #[default]
    NoLoopBound,
}

impl ShaderChecks {
    /// `full` or `no-loop-bound`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "full" => Some(ShaderChecks::Full),
            "no-loop-bound" => Some(ShaderChecks::NoLoopBound),
            _ => None,
        }
    }
}

/// The optional capabilities the kernels can use, as enabled on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuFeatures {
    /// The adapter runs shaders on the CPU (lavapipe, SwiftShader, WARP): invocations are SIMD
    /// lanes, barriers are costly, and kernels pick shapes suited to that.
    pub cpu: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// Q4_0, Q4_1 and Q8_0 products against activations quantized to 8-bit planes, through
    /// WGSL's packed 4x8 integer dot products (`GpuOptions::dot4`).
    pub dot4: bool,
    /// Four lanes per 32-weight chunk in the GPU decode products (`GpuOptions::matvec_split`).
    pub matvec_split: bool,
    /// Prefill products through cooperative matrices (`GpuOptions::coop_matrix`).
    pub coop_matrix: bool,
    /// Their fragments' side, 16 or 8 (0 without them).
    pub coop_fragment: u32,
    /// Prefill matmul tiles chosen for this device (`GpuOptions::matmul_tiles`), if not the
    /// built-in ones.
    pub matmul_tiles: Option<[u32; 3]>,
    /// A CPU adapter's products share activation loads through subgroup broadcasts, which
    /// needs subgroups of at least 4 lanes; false elsewhere, or where the plain loads were
    /// chosen ([`CpuProducts`]).
    pub cpu_broadcast: bool,
}

/// The fragment size `matmul_coop.wgsl` (16) or `matmul_coop8.wgsl` (8) can run with on
/// `adapter` with the features in `wanted`, if any: a driver that lists 16x16x16 (preferred) or
/// 8x8x8 f16 matrices with f32 sums, shader-f16, and subgroups of one size (the kernel's four
/// subgroups are four times that many invocations).
fn coop_matrix_fragment(
    adapter: &wgpu::Adapter,
    info: &wgpu::AdapterInfo,
    wanted: wgpu::Features,
) -> Option<u32> {
    use wgpu::CooperativeScalarType as S;
    let usable = adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && wanted.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == info.subgroup_max_size;
    let listed = |n: u32| {
        adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (n, n, n)
                && p.ab_type == S::F16
                && p.cr_type == S::F32
        })
    };
    [16, 8].into_iter().find(|&n| {
        usable && listed(n) && fits_coop_workgroup(&adapter.limits(), 4 * info.subgroup_max_size, n)
    })
}

/// Workgroup memory of the cooperative-matrix kernel with fragments of `frag`: its f16 x and W
/// tiles (4 frag rows of 2 frag + 8) and its f32 output tile (4 frag rows of 4 frag + 4).
fn coop_workgroup_bytes(frag: u32) -> u32 {
    2 * (4 * frag) * (2 * frag + 8) * 2 + (4 * frag) * (4 * frag + 4) * 4
}

/// Whether the cooperative-matrix kernel's workgroup of `invocations` and its tiles fit the
/// adapter.
fn fits_coop_workgroup(limits: &wgpu::Limits, invocations: u32, frag: u32) -> bool {
    invocations <= limits.max_compute_invocations_per_workgroup
        && invocations <= limits.max_compute_workgroup_size_x
        && coop_workgroup_bytes(frag) <= limits.max_compute_workgroup_storage_size
}

/// One adapter as `sovereign devices` shows it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_sizes: (u32, u32),
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations: u32,
    /// Whether wgpu offers its (experimental) cooperative matrices on this adapter.
    pub cooperative_matrix: bool,
    /// The cooperative matrix shapes the driver reports, as `MxNxK A/B->C` (`16x16x16 F16->F32`).
    pub cooperative_shapes: Vec<String>,
}

fn summarize(index: usize, adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let features = adapter.features();
    let limits = adapter.limits();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP),
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
        max_storage_binding: limits.max_storage_buffer_binding_size,
        max_buffer: limits.max_buffer_size,
        max_workgroup_storage: limits.max_compute_workgroup_storage_size,
        max_invocations: limits.max_compute_invocations_per_workgroup,
        cooperative_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        cooperative_shapes: adapter
            .cooperative_matrix_properties()
            .iter()
            .map(|p| {
                format!(
                    "{}x{}x{} {:?}->{:?}",
                    p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                )
            })
            .collect(),
    }
}

fn new_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // The kernels need Vulkan, Metal, DX12 or WebGPU. A build that shares wgpu with the desktop
    // app also has the GL backend, whose EGL contexts do not survive adapter requests from
    // several threads on one instance; `WGPU_BACKEND` still picks any backend by hand.
    desc.backends = wgpu::Backends::PRIMARY.with_env();
    // Validation layers slow lavapipe several-fold; opt in with WGPU_DEBUG / WGPU_VALIDATION.
    if std::env::var_os("WGPU_VALIDATION").is_none() && std::env::var_os("WGPU_DEBUG").is_none() {
        desc.flags
            .remove(wgpu::InstanceFlags::VALIDATION | wgpu::InstanceFlags::DEBUG);
    }
    wgpu::Instance::new(desc)
}

/// The process's one instance. Destroying a Vulkan instance lets the loader unload the driver,
/// and NVIDIA's Linux driver leaves per-thread destructors behind in every thread that used the
/// GPU: once the driver was unloaded, each such thread crashed as it exited (seen on an H100 when
/// a model's thread ended after its context was dropped). Keeping the instance for the life of
/// the process keeps the driver loaded.
#[cfg(not(target_arch = "wasm32"))]
fn shared_instance() -> wgpu::Instance {
    static INSTANCE: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(new_instance).clone()
}

/// In the browser an instance is only a handle on `navigator.gpu`.
#[cfg(target_arch = "wasm32")]
fn shared_instance() -> wgpu::Instance {
    new_instance()
}

async fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        instance.enumerate_adapters(wgpu::Backends::all()).await
    }
    #[cfg(target_arch = "wasm32")]
    {
        // The browser hands out one adapter at a time.
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        instance
            .request_adapter(&options)
            .await
            .into_iter()
            .collect()
    }
}

/// Every adapter this machine offers, in the order `--adapter N` counts them.
pub async fn list_adapters() -> Vec<AdapterSummary> {
    let instance = shared_instance();
    adapters(&instance)
        .await
        .iter()
        .enumerate()
        .map(|(i, a)| summarize(i, a))
        .collect()
}

#[derive(Default)]
struct ErrorSink {
    uncaptured: Option<String>,
    lost: Option<String>,
}

/// A device and queue with what the kernels need to know about them.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: GpuFeatures,
    limits: wgpu::Limits,
    max_binding_size: u64,
    shader_checks: ShaderChecks,
    submit_first: u32,
    /// Where the choice of CPU products stands: one of the `CPU_PRODUCTS_*` states.
    cpu_products: AtomicU8,
    cpu_products_file: Option<std::path::PathBuf>,
    errors: Arc<Mutex<ErrorSink>>,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    #[cfg(not(target_arch = "wasm32"))]
    poller: Poller,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("features", &self.features)
            .finish()
    }
}

impl GpuContext {
    pub async fn new(options: &GpuOptions) -> Result<Self, GpuError> {
        let instance = shared_instance();
        let adapter = match &options.adapter {
            None => {
                let request = wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                };
                match instance.request_adapter(&request).await {
                    Ok(a) => a,
                    // Some drivers refuse the preference; any adapter beats none.
                    Err(_) => adapters(&instance)
                        .await
                        .into_iter()
                        .next()
                        .ok_or(GpuError::NoAdapter)?,
                }
            }
            Some(wanted) => {
                let all = adapters(&instance).await;
                if all.is_empty() {
                    return Err(GpuError::NoAdapter);
                }
                // A number is an index only: "1" must not pick "LLVM 15.0.6" by its name.
                let needle = wanted.trim().to_lowercase();
                let found = match needle.parse::<usize>() {
                    Ok(i) => (i < all.len()).then_some(i),
                    Err(_) if needle.is_empty() => None,
                    Err(_) => all
                        .iter()
                        .position(|a| a.get_info().name.to_lowercase().contains(&needle)),
                };
                match found {
                    Some(i) => all.into_iter().nth(i).ok_or(GpuError::NoAdapter)?,
                    None => {
                        let available = all
                            .iter()
                            .enumerate()
                            .map(|(i, a)| format!("{i}: {}", a.get_info().name))
                            .collect::<Vec<_>>()
                            .join(", ");
                        return Err(GpuError::AdapterNotFound {
                            wanted: wanted.clone(),
                            available,
                        });
                    }
                }
            }
        };
        Self::from_adapter(adapter, options).await
    }

    async fn from_adapter(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Self, GpuError> {
        let info = adapter.get_info();
        let available = adapter.features();
        let mut wanted = wgpu::Features::empty();
        if available.contains(wgpu::Features::SHADER_F16) && !options.disable_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if available.contains(wgpu::Features::SUBGROUP) && !options.disable_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let cpu = options
            .cpu_adapter
            .unwrap_or(info.device_type == wgpu::DeviceType::Cpu)
            && !options.gpu_kernels_on_cpu;
        let coop_fragment = if options.coop_matrix && cpu {
            tracing::warn!(
                "cooperative matrices asked for but not used on {}: a CPU adapter runs its own rowwise products, unless SOVEREIGN_GPU_KERNELS=1",
                info.name
            );
            0
        } else if options.coop_matrix {
            let fragment = coop_matrix_fragment(&adapter, &info, wanted);
            if fragment.is_none() {
                tracing::warn!(
                    "cooperative matrices asked for but not used on {}: they need a driver that lists 16x16x16 or 8x8x8 f16 matrices with f32 sums, with shader-f16 and subgroups of one size",
                    info.name
                );
            }
            fragment.unwrap_or(0)
        } else {
            0
        };
        let coop_matrix = coop_fragment > 0;
        if coop_matrix {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        // Only the kernel profile (`bench --profile`) writes timestamps; asking costs nothing.
        if available.contains(wgpu::Features::TIMESTAMP_QUERY) {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        // The adapter's own limits: the defaults would cap bindings at 128 MiB and buffers at
        // 256 MiB even on cards with far more.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("sovereign"),
                required_features: wanted,
                required_limits: limits.clone(),
                experimental_features: if coop_matrix {
                    // SAFETY: wgpu's experimental cooperative matrices are used by one kernel,
                    // `matmul_coop[8].wgsl`, only with a shape and types the driver lists, and
                    // only when asked for; its results are checked against the CPU reference by
                    // the kernel tests and the self-test.
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;

        #[cfg(not(target_arch = "wasm32"))]
        let device_clone = device.clone();
        let errors = Arc::new(Mutex::new(ErrorSink::default()));
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!("uncaptured GPU error: {e}");
            if let Ok(mut s) = sink.lock() {
                s.uncaptured.get_or_insert_with(|| e.to_string());
            }
        }));
        let sink = Arc::clone(&errors);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut s) = sink.lock() {
                s.lost
                    .get_or_insert_with(|| format!("{reason:?}: {message}"));
            }
        });

        let subgroups = wanted.contains(wgpu::Features::SUBGROUP)
            || (cfg!(target_arch = "wasm32")
                && options.page_subgroups
                && !options.disable_subgroups);
        let subgroup_min_size = options
            .subgroup_min_size
            .map_or(info.subgroup_min_size, |n| n.min(info.subgroup_min_size));
        let features = GpuFeatures {
            cpu,
            shader_f16: wanted.contains(wgpu::Features::SHADER_F16),
            subgroups,
            subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            // Naga writes dot4I8Packed as the driver's integer dot product where it has one and
            // as shifts and multiplies where not, so every native adapter has it; browsers have
            // had it since 2024 (WGSL's packed_4x8_integer_dot_product).
            dot4: options.dot4,
            matvec_split: options.matvec_split,
            coop_matrix,
            coop_fragment,
            matmul_tiles: options.matmul_tiles,
            cpu_broadcast: cpu
                && subgroups
                && subgroup_min_size >= 4
                && options.cpu_products != CpuProducts::Plain,
        };
        let hard_cap = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding_size = options
            .max_binding_size
            .map_or(hard_cap, |cap| cap.clamp(256, hard_cap));
        tracing::info!(
            adapter = %info.name,
            backend = ?info.backend,
            f16 = features.shader_f16,
            subgroups = features.subgroups,
            max_binding_size,
            "GPU ready"
        );
        Ok(GpuContext {
            device,
            queue,
            info,
            features,
            limits,
            max_binding_size,
            shader_checks: options.shader_checks,
            submit_first: options.submit_first.unwrap_or(DEFAULT_SUBMIT_FIRST),
            cpu_products: AtomicU8::new(
                if features.cpu_broadcast && options.cpu_products == CpuProducts::Measure {
                    CPU_PRODUCTS_PENDING
                } else {
                    CPU_PRODUCTS_SETTLED
                },
            ),
            cpu_products_file: options.cpu_products_file.clone(),
            errors,
            pipelines: Mutex::new(HashMap::new()),
            #[cfg(not(target_arch = "wasm32"))]
            poller: Poller::start(device_clone)?,
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether compute passes can write GPU timestamps (the kernel profile needs them).
    pub fn timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    pub fn features(&self) -> GpuFeatures {
        let mut features = self.features;
        if self.cpu_products.load(Ordering::Acquire) == CPU_PRODUCTS_PLAIN {
            features.cpu_broadcast = false;
        }
        features
    }

    /// Whether the caller is to measure the CPU products now: true for one caller at a time
    /// while they are still to be chosen. A model loading meanwhile on the same context builds
    /// its products as the choice stands. The caller ends with
    /// [`Self::finish_cpu_products`].
    pub(crate) fn begin_cpu_products(&self) -> bool {
        self.cpu_products
            .compare_exchange(
                CPU_PRODUCTS_PENDING,
                CPU_PRODUCTS_MEASURING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Ends a measurement: `Some(plain)` settles the choice, and with `Some(true)` kernels built
    /// from now on load every activation block per lane ([`GpuFeatures::cpu_broadcast`] false);
    /// `None` leaves it to the next load.
    pub(crate) fn finish_cpu_products(&self, plain: Option<bool>) {
        let state = match plain {
            Some(true) => CPU_PRODUCTS_PLAIN,
            Some(false) => CPU_PRODUCTS_SETTLED,
            None => CPU_PRODUCTS_PENDING,
        };
        self.cpu_products.store(state, Ordering::Release);
    }

    /// The CPU products measured before on this adapter, driver and shader checks for `what`
    /// (the kernels and the product measured): `Some(true)` where the plain ones won.
    pub(crate) fn saved_cpu_products(&self, what: &str) -> Option<bool> {
        let path = self.cpu_products_file.as_ref()?;
        let saved = read_cpu_products(path);
        match saved.get(&self.cpu_products_key(what))?.as_str()? {
            "plain" => Some(true),
            "broadcast" => Some(false),
            _ => None,
        }
    }

    /// Keeps a measured choice for [`Self::saved_cpu_products`]. A choice that cannot be
    /// written is measured again next time; so is one that another process overwrote at the
    /// same moment.
    pub(crate) fn save_cpu_products(&self, what: &str, plain: bool) {
        let Some(path) = &self.cpu_products_file else {
            return;
        };
        let mut saved = read_cpu_products(path);
        saved.insert(
            self.cpu_products_key(what),
            serde_json::Value::from(if plain { "plain" } else { "broadcast" }),
        );
        if let Err(e) = write_whole(path, &serde_json::Value::Object(saved).to_string()) {
            tracing::debug!(
                "cannot keep the CPU products' choice in {}: {e}",
                path.display()
            );
        }
    }

    fn cpu_products_key(&self, what: &str) -> String {
        format!(
            "{} | {:?} | {} | {} | {:?} | {what}",
            self.info.name,
            self.info.backend,
            self.info.driver,
            self.info.driver_info,
            self.shader_checks
        )
    }

    /// Dispatches in a step's first command buffer ([`DEFAULT_SUBMIT_FIRST`]); 0: one command
    /// buffer per step.
    pub fn submit_first(&self) -> u32 {
        self.submit_first
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The most bytes one storage binding may cover (adapter limit, or the configured cap).
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding_size
    }

    /// Reports a device loss or an error that escaped every error scope since the last check.
    pub fn check(&self) -> Result<(), GpuError> {
        let mut sink = self
            .errors
            .lock()
            .map_err(|_| GpuError::Uncaptured("error sink poisoned".into()))?;
        if let Some(reason) = &sink.lost {
            return Err(GpuError::DeviceLost(reason.clone()));
        }
        if let Some(message) = sink.uncaptured.take() {
            return Err(GpuError::Uncaptured(message));
        }
        Ok(())
    }

    /// Runs `f` inside out-of-memory and validation error scopes and turns what they catch into
    /// an error naming `what`.
    pub async fn scoped<T>(
        &self,
        what: &str,
        f: impl FnOnce(&wgpu::Device) -> T,
    ) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f(&self.device);
        let validation = validation.pop();
        let oom = oom.pop();
        if let Some(e) = validation.await {
            return Err(classify(what, e));
        }
        if let Some(e) = oom.await {
            return Err(classify(what, e));
        }
        self.check()?;
        Ok(value)
    }

    pub async fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        // wgpu rejects zero-sized bindings; four bytes keep empty tensors bindable.
        let size = size.max(4).next_multiple_of(4);
        self.scoped(&format!("allocating {label} ({size} bytes)"), |d| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        })
        .await
    }

    /// A storage buffer filled with `data` (padded to four bytes).
    pub async fn storage_buffer_init(
        &self,
        label: &str,
        data: &[u8],
    ) -> Result<wgpu::Buffer, GpuError> {
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        self.buffer_init(label, data, usage).await
    }

    pub async fn buffer_init(
        &self,
        label: &str,
        data: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        let buffer = self
            .create_buffer(
                label,
                data.len() as u64,
                usage | wgpu::BufferUsages::COPY_DST,
            )
            .await?;
        let whole = data.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buffer, 0, &data[..whole]);
        }
        if whole < data.len() {
            let mut tail = [0u8; 4];
            tail[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.queue.write_buffer(&buffer, whole as u64, &tail);
        }
        Ok(buffer)
    }

    /// A compute pipeline for joined WGSL `source`, cached by `key` (shader name and constants).
    pub async fn pipeline(
        &self,
        key: &str,
        source: &str,
        constants: &[(&str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        if let Some(p) = self.pipelines.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(p);
        }
        let checks = self.shader_checks;
        let pipeline = self
            .scoped(&format!("creating pipeline {key}"), |d| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(key),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                };
                let module = match checks {
                    ShaderChecks::Full => d.create_shader_module(desc),
                    ShaderChecks::NoLoopBound => {
                        let runtime = wgpu::ShaderRuntimeChecks {
                            force_loop_bounding: false,
                            ..wgpu::ShaderRuntimeChecks::checked()
                        };
                        // SAFETY: the one check dropped is the loop bound. The engine's shaders
                        // are its own, and each loop's trip count comes from step and kernel
                        // parameters that the host checks before binding; bounds and division
                        // checks stay on.
                        unsafe { d.create_shader_module_trusted(desc, runtime) }
                    }
                };
                d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(key),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            })
            .await?;
        let pipeline = Arc::new(pipeline);
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(key.to_string(), Arc::clone(&pipeline));
        }
        Ok(pipeline)
    }

    /// Waits for `slice` (of a MAP_READ buffer) to map. The future never blocks its thread: on
    /// the web the browser resolves it; natively a poller thread drives the device while maps
    /// are pending, so an async runtime's workers stay free.
    pub async fn map_read(&self, slice: wgpu::BufferSlice<'_>) -> Result<(), GpuError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        #[cfg(not(target_arch = "wasm32"))]
        let pending = self.poller.begin();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        pending.wake();
        let mapped = rx
            .await
            .map_err(|_| GpuError::Map("map callback dropped".into()))?;
        self.check()?;
        mapped.map_err(|e| GpuError::Map(e.to_string()))
    }
}

/// Drives a native device while buffer maps are pending: wgpu runs map callbacks only from
/// `Device::poll`, and polling here keeps blocking waits out of the futures.
#[cfg(not(target_arch = "wasm32"))]
struct Poller {
    state: Arc<(Mutex<PollerState>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Default)]
struct PollerState {
    pending: usize,
    stop: bool,
}

/// One pending map; dropping it (when the map resolved or its future was dropped) releases it.
#[cfg(not(target_arch = "wasm32"))]
struct PendingMap<'a> {
    state: &'a (Mutex<PollerState>, std::sync::Condvar),
}

#[cfg(not(target_arch = "wasm32"))]
impl PendingMap<'_> {
    fn wake(&self) {
        self.state.1.notify_all();
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for PendingMap<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.0.lock() {
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Poller {
    fn start(device: wgpu::Device) -> Result<Self, GpuError> {
        let state: Arc<(Mutex<PollerState>, std::sync::Condvar)> = Arc::default();
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("sovereign-gpu-poll".into())
            .spawn(move || {
                let (lock, cv) = &*shared;
                loop {
                    {
                        let Ok(mut s) = lock.lock() else { return };
                        while s.pending == 0 && !s.stop {
                            s = match cv.wait(s) {
                                Ok(s) => s,
                                Err(_) => return,
                            };
                        }
                        if s.stop {
                            return;
                        }
                    }
                    // Waits for the work submitted so far and runs the callbacks; a lost device
                    // reports through the device-lost callback and the maps fail. The wait has
                    // no timeout: after a timed-out wait, wgpu-core 30 asserts on a fence value
                    // that a `Queue::submit` on another thread may have overtaken meanwhile, and
                    // the panic took this thread, leaving every later map unresolved. A panic
                    // from wgpu is still caught, so that the maps go on being driven.
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        device.poll(wgpu::PollType::wait_indefinitely())
                    }));
                    if !matches!(polled, Ok(Ok(_))) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
            .map_err(|e| GpuError::Internal {
                what: "starting the device poller thread".into(),
                message: e.to_string(),
            })?;
        Ok(Poller {
            state,
            thread: Some(thread),
        })
    }

    fn begin(&self) -> PendingMap<'_> {
        if let Ok(mut s) = self.state.0.lock() {
            s.pending += 1;
        }
        PendingMap { state: &self.state }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Poller {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.0.lock() {
            s.stop = true;
        }
        self.state.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn classify(what: &str, e: wgpu::Error) -> GpuError {
    let what = what.to_string();
    match e {
        wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory { what },
        wgpu::Error::Validation { description, .. } => GpuError::Validation {
            what,
            message: description,
        },
        wgpu::Error::Internal { description, .. } => GpuError::Internal {
            what,
            message: description,
        },
    }
}

/// Splits `n` workgroups over x and y so that neither exceeds the per-dimension limit; shaders
/// rebuild the linear index as `x + y * num_workgroups.x`.
pub fn grid(n: u32, max_per_dim: u32) -> (u32, u32) {
    if n <= max_per_dim {
        (n.max(1), 1)
    } else {
        let y = n.div_ceil(max_per_dim);
        (n.div_ceil(y), y)
    }
}

/// The states of [`GpuContext::begin_cpu_products`]: to be measured, being measured, settled
/// (broadcasts or nothing to choose), and plain loads chosen.
const CPU_PRODUCTS_PENDING: u8 = 0;
const CPU_PRODUCTS_MEASURING: u8 = 1;
const CPU_PRODUCTS_SETTLED: u8 = 2;
const CPU_PRODUCTS_PLAIN: u8 = 3;

/// Writes `text` to a file beside `path` and renames it into place, so that a reader never
/// sees half a file; the file beside is removed if that fails.
#[cfg(not(target_arch = "wasm32"))]
fn write_whole(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::sync::atomic::AtomicU64;
    // Unique within the process too: contexts on several threads may save at once.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{}.{n}", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A browser has no files to keep choices in.
#[cfg(target_arch = "wasm32")]
fn write_whole(_path: &std::path::Path, _text: &str) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The choices kept in `path`, or none where it cannot be read.
fn read_cpu_products(path: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}
