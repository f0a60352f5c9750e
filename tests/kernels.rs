//! Every kernel on the GPU against its CPU reference, on random inputs with fixed seeds, for every
//! weight type and for both the plain and the subgroup path.

mod common;

use std::sync::Arc;

use common::{
    Rng, assert_close, coop_matrix_gpu, gpu, kv_storage, kv_types, read_f32, read_kv, read_u32,
    run, run_step, storage, zeros,
};
use sovereign::format::DType;
use sovereign::gpu::{GpuContext, GpuOptions, WeightTensor};
use sovereign::kernels::argmax::Argmax;
use sovereign::kernels::attention::{Attention, AttentionParams, AttentionPath};
use sovereign::kernels::embed::Embed;
use sovereign::kernels::kv_store::{KvStore, KvStoreParams};
use sovereign::kernels::matmul::{Matmul, MatmulKernel};
use sovereign::kernels::rms_norm::RmsNorm;
use sovereign::kernels::silu_mul::SiluMul;
use sovereign::kernels::{KvType, PagedLayout, StepBuffer, StepInput, selftest};
use sovereign::reference::{self, AttentionShape, RopeConfig};

const DTYPES: [DType; 7] = [
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
];
/// Super-blocks of 256: rows are multiples of 256 long.
const K_DTYPES: [DType; 3] = [DType::Q4_K, DType::Q5_K, DType::Q6_K];

/// Every kernel shape the adapter can run: the plain path (no subgroups, no f16, GPU shapes), the
/// adapter's features with GPU shapes, and the adapter as it is (on lavapipe: the CPU shapes).
fn contexts() -> Vec<(&'static str, Arc<GpuContext>)> {
    let plain = gpu(GpuOptions {
        disable_f16: true,
        disable_subgroups: true,
        gpu_kernels_on_cpu: true,
        ..Default::default()
    });
    let features = gpu(GpuOptions {
        gpu_kernels_on_cpu: true,
        ..Default::default()
    });
    // The products against 8-bit activation planes, in the GPU shapes and (on a CPU adapter)
    // the rowwise one.
    let dot4 = gpu(GpuOptions {
        gpu_kernels_on_cpu: true,
        dot4: true,
        ..Default::default()
    });
    let cpu_dot4 = gpu(GpuOptions {
        dot4: true,
        ..Default::default()
    });
    // The GPU decode products with four lanes per 32-weight chunk.
    let split = gpu(GpuOptions {
        gpu_kernels_on_cpu: true,
        matvec_split: true,
        ..Default::default()
    });
    let native = gpu(GpuOptions::default());
    let mut v = vec![("plain", plain)];
    if let Some(coop) = coop_matrix_gpu() {
        v.push(("coop", coop));
    }
    if features.features().subgroups || features.features().shader_f16 {
        v.push(("features", features));
    }
    assert!(dot4.features().dot4 && cpu_dot4.features().dot4);
    v.push(("dot4", dot4));
    // Only the subgroup decode products split their chunks. CPU adapters (lavapipe in CI) have
    // subgroups, so there the split kernels always run.
    assert!(split.features().matvec_split);
    // features().cpu is false here (GPU-shaped kernels), so ask the adapter itself.
    assert!(
        split.features().subgroups || split.adapter_info().device_type != wgpu::DeviceType::Cpu,
        "a CPU adapter without subgroups: the split decode products would not run"
    );
    v.push(("matvec-split", split));
    if native.features().cpu {
        v.push(("cpu", native));
        v.push(("cpu-dot4", cpu_dot4));
    }
    v
}

/// Contexts made and dropped on several threads at once share the process's one wgpu instance
/// (`gpu::shared_instance`). In a build that also has wgpu's GL backend (the workspace's, through
/// the desktop app) that instance once included GL, whose adapters failed with an EGL error when
/// requested from several threads together.
#[test]
fn contexts_from_many_threads_at_once() {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..10 {
                    let ctx = gpu(GpuOptions::default());
                    assert!(!ctx.adapter_info().name.is_empty());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Random weights quantized to `dtype`, and their dequantized values (the reference input).
fn weights(rng: &mut Rng, dtype: DType, n_rows: usize, row_len: usize) -> (Vec<u8>, Vec<f32>) {
    let values = rng.vec(n_rows * row_len, 1.0);
    let bytes = reference::quantize(dtype, &values).unwrap();
    let deq = reference::dequantize(dtype, &bytes, values.len()).unwrap();
    (bytes, deq)
}

fn upload(
    ctx: &GpuContext,
    dtype: DType,
    row_len: usize,
    n_rows: usize,
    bytes: &[u8],
) -> WeightTensor {
    pollster::block_on(WeightTensor::upload(
        ctx,
        "w",
        dtype,
        row_len as u32,
        n_rows as u32,
        bytes,
    ))
    .unwrap()
}

/// Page size of the tests' KV pools.
const PAGE: u32 = 16;

/// A step buffer for `max` tokens; block tables of 4 slots covering 16384 positions.
fn step(ctx: &GpuContext, max: u32) -> StepBuffer {
    let layout = PagedLayout {
        page_size: PAGE,
        pages_per_seq: 16384 / PAGE,
        max_slots: 4,
    };
    pollster::block_on(StepBuffer::new(ctx, max, layout)).unwrap()
}

#[test]
fn embed_matches_reference_for_every_dtype() {
    let mut rng = Rng::new(1);
    let n_vocab = 300;
    let tokens = [0u32, 299, 17, 150, 17, 64];
    // A binding cap forces the table over several buffers: rows past the first chunk must work.
    let ctx = gpu(GpuOptions {
        max_binding_size: Some(4096),
        ..Default::default()
    });
    for dtype in DTYPES.into_iter().chain(K_DTYPES) {
        // K-quant rows are whole super-blocks; two of them for Q6_K rows at both alignments.
        let n_embd = if K_DTYPES.contains(&dtype) { 512 } else { 96 };
        let (bytes, deq) = weights(&mut rng, dtype, n_vocab, n_embd);
        let table = upload(&ctx, dtype, n_embd, n_vocab, &bytes);
        assert!(table.chunks.len() > 1, "{dtype}: table not split");
        let out = zeros(&ctx, 8 * n_embd);
        let s = step(&ctx, 8);
        let op = pollster::block_on(Embed::new(&ctx, dtype)).unwrap();
        let d = op.bind(&ctx, s.buffer(), &table, &out, 8).unwrap();
        run(&ctx, &d.iter().collect::<Vec<_>>(), 0, &tokens, &s);
        let got = read_f32(&ctx, &out, tokens.len() * n_embd);
        assert_close(
            &format!("embed {dtype}"),
            &got,
            &reference::embed(&deq, n_embd, &tokens),
            0.0,
            0.0,
        );
    }
}

#[test]
fn rms_norm_matches_reference() {
    let mut rng = Rng::new(2);
    // The GPU workgroup (256) and, on a CPU adapter, the CPU one (16).
    let gpu_shaped = gpu(GpuOptions {
        gpu_kernels_on_cpu: true,
        ..Default::default()
    });
    for ctx in [gpu_shaped, gpu(GpuOptions::default())] {
        let op = pollster::block_on(RmsNorm::new(&ctx)).unwrap();
        // Rows shorter than a workgroup's vec4s, spanning several of each invocation's held
        // values, and longer than the held values (the rest is read twice).
        for n_embd in [576usize, 2052, 9000] {
            rms_norm_rows(&ctx, &op, &mut rng, n_embd);
        }
    }
}

fn rms_norm_rows(ctx: &GpuContext, op: &RmsNorm, rng: &mut Rng, n_embd: usize) {
    let (n_tokens, eps) = (5usize, 1e-5f32);
    let x = rng.vec(n_tokens * n_embd, 3.0);
    let w = rng.vec(n_embd, 1.0);
    let want = reference::rms_norm(&x, &w, eps);
    let mut x = x;
    x.resize(8 * n_embd, 0.0);
    let tokens = vec![0u32; n_tokens];
    let s = step(ctx, 8);
    let (xb, wb) = (storage(ctx, &x), storage(ctx, &w));

    let out = zeros(ctx, 8 * n_embd);
    let d = op
        .bind(
            ctx,
            s.buffer(),
            &xb,
            &wb,
            &out,
            n_embd as u32,
            eps,
            false,
            8,
        )
        .unwrap();
    run(ctx, &[&d], 0, &tokens, &s);
    assert_close(
        &format!("rms_norm {n_embd}"),
        &read_f32(ctx, &out, n_tokens * n_embd),
        &want,
        1e-5,
        1e-5,
    );

    // Gathered output rows (the rows whose logits a step needs), in any order.
    let gathered = zeros(ctx, 8 * n_embd);
    let d = op
        .bind(
            ctx,
            s.buffer(),
            &xb,
            &wb,
            &gathered,
            n_embd as u32,
            eps,
            true,
            8,
        )
        .unwrap();
    let positions: Vec<u32> = (0..n_tokens as u32).collect();
    let slots = vec![0; n_tokens];
    let pages = [0u32];
    let out_rows = [4u32, 1];
    let input = StepInput {
        tokens: &tokens,
        positions: &positions,
        slots: &slots,
        out_rows: &out_rows,
        tables: &[(0, &pages)],
    };
    run_step(ctx, &[&d], &input, &s);
    let mut want_rows = want[4 * n_embd..5 * n_embd].to_vec();
    want_rows.extend_from_slice(&want[n_embd..2 * n_embd]);
    assert_close(
        &format!("rms_norm gathered rows {n_embd}"),
        &read_f32(ctx, &gathered, 2 * n_embd),
        &want_rows,
        1e-5,
        1e-5,
    );
}

/// K rotated and K, V stored at their positions, in every cache type the adapter has; rows
/// outside the step keep their contents; Q rotated in place by the same dispatch.
#[test]
fn kv_store_matches_reference() {
    let ctx = gpu(GpuOptions::default());
    let mut rng = Rng::new(4);
    let (n_head_kv, head_dim) = (3usize, 64usize);
    let row = n_head_kv * head_dim;
    for kv_type in kv_types(&ctx) {
        let op = pollster::block_on(KvStore::new(&ctx, kv_type)).unwrap();
        for (neox, n_rot, pos0, n_tokens) in [
            (false, 64, 9u32, 4usize),
            (true, 48, 0, 7),
            (false, 32, 3000, 1),
            (true, 64, 8000, 2),
        ] {
            let n_ctx = pos0 as usize + n_tokens + 2;
            let cfg = RopeConfig {
                n_rot,
                freq_base: 10_000.0,
                freq_scale: 0.5,
                neox,
            };
            let k_new = rng.vec(n_tokens * row, 2.0);
            let v_new = rng.vec(n_tokens * row, 2.0);
            let mut k_old = rng.vec(n_ctx * row, 1.0);
            let mut v_old = rng.vec(n_ctx * row, 1.0);
            reference::round_kv(&mut k_old, kv_type);
            reference::round_kv(&mut v_old, kv_type);
            let positions: Vec<u32> = (pos0..pos0 + n_tokens as u32).collect();
            let mut k_rot = k_new.clone();
            reference::rope(&mut k_rot, n_head_kv, head_dim, &positions, cfg);
            let (mut k_want, mut v_want) = (k_old.clone(), v_old.clone());
            let range = pos0 as usize * row..(pos0 as usize + n_tokens) * row;
            k_want[range.clone()].copy_from_slice(&k_rot);
            v_want[range].copy_from_slice(&v_new);
            // V is copied, so the cache must hold exactly its rounding; K's rounding is that of
            // its rotated values.
            reference::round_kv(&mut k_want, kv_type);
            reference::round_kv(&mut v_want, kv_type);
            let kc = kv_storage(&ctx, kv_type, &k_old, row);
            let vc = kv_storage(&ctx, kv_type, &v_old, row);
            // Q, K and V come as the model's projections write them: rows of q | k | v in one
            // buffer. Q's five heads (GQA: more than K's three) are rotated in place.
            let n_head = 5;
            let q_width = n_head * head_dim;
            let src_stride = q_width + 2 * row;
            let mut qkv = rng.vec(n_tokens * src_stride, 2.0);
            for t in 0..n_tokens {
                let at = t * src_stride + q_width;
                qkv[at..at + row].copy_from_slice(&k_new[t * row..(t + 1) * row]);
                qkv[at + row..at + 2 * row].copy_from_slice(&v_new[t * row..(t + 1) * row]);
            }
            let mut qkv_want = qkv.clone();
            for t in 0..n_tokens {
                let q = &mut qkv_want[t * src_stride..t * src_stride + q_width];
                reference::rope(q, n_head, head_dim, &positions[t..t + 1], cfg);
            }
            let qkv_init = qkv;
            let qkv = storage(&ctx, &qkv_init);
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
            let s = step(&ctx, 8);
            let d = op
                .bind(
                    &ctx,
                    s.buffer(),
                    &qkv,
                    &kc,
                    &vc,
                    params,
                    n_tokens as u32,
                    n_ctx as u32,
                )
                .unwrap();
            run(&ctx, &[&d], pos0, &vec![0; n_tokens], &s);
            let k_got = read_kv(&ctx, kv_type, &kc, n_ctx, row);
            let v_got = read_kv(&ctx, kv_type, &vc, n_ctx, row);
            let label = format!("kv_store {kv_type} neox={neox} n_rot={n_rot} pos0={pos0}");
            if kv_type == KvType::Q8_0 {
                // A rotated value within rounding of a step boundary may land one step of its
                // block away (at most 2.9 / 127 for inputs of up to 2); few may.
                assert_close(&format!("{label} K"), &k_got, &k_want, 2.9 / 127.0, 0.0);
                let off = k_got.iter().zip(&k_want).filter(|(a, b)| a != b).count();
                assert!(
                    off * 100 < k_want.len(),
                    "{label}: {off} K values off a step"
                );
            } else {
                // An f16 cache holds each value to within half an f16 step (2^-11 relative);
                // the angle at position 3000 carries ~2e-4 rad of f32 rounding, at 8000 ~5e-4.
                let rtol = if kv_type == KvType::F16 { 1e-3 } else { 1e-5 };
                let atol = if pos0 > 5000 { 3e-3 } else { 1e-3 };
                assert_close(&format!("{label} K"), &k_got, &k_want, atol, rtol);
            }
            assert_close(&format!("{label} V"), &v_got, &v_want, 0.0, 0.0);
            // Q rotated as K is (at position 8000 an f32 angle carries ~5e-4 rad of rounding;
            // the reference is exact); K and V, read from the same rows, left as they were.
            let atol = if pos0 > 1000 { 3e-3 } else { 2e-5 };
            let qkv_got = read_f32(&ctx, &qkv, qkv_init.len());
            assert_close(&format!("{label} Q"), &qkv_got, &qkv_want, atol, 1e-5);
        }
    }
}

/// Runs `y = x W^T` with the decode or the prefill kernel and compares with the reference
/// (`sovereign::kernels::selftest::matmul`, the check the browser runs too).
#[allow(clippy::too_many_arguments)]
fn check_matmul(
    ctx: &GpuContext,
    label: &str,
    kind: MatmulKernel,
    dtype: DType,
    n_tokens: usize,
    n_in: usize,
    n_out: usize,
    seed: u64,
) {
    let check = pollster::block_on(selftest::matmul(
        ctx, kind, dtype, n_tokens, n_in, n_out, seed,
    ))
    .unwrap();
    assert!(check.passed, "{label}: {check:?}");
}

#[test]
fn matvec_matches_reference_for_every_dtype_and_path() {
    let vector = MatmulKernel::Vector;
    let batch = MatmulKernel::VectorBatch;
    for (label, ctx) in contexts() {
        // The batched decode kernel runs where the GPU-shaped kernels have subgroups; on
        // lavapipe that is the "features" context, so it is never left out there.
        let has_batch = Matmul::has_batch(ctx.features());
        assert_eq!(
            has_batch,
            ["features", "dot4", "matvec-split", "coop"].contains(&label)
                && ctx.features().subgroups,
            "{label}"
        );
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            check_matmul(&ctx, label, vector, dtype, 1, 576, 200, 10 + i as u64);
            check_matmul(&ctx, label, vector, dtype, 3, 1536, 77, 20 + i as u64);
            // Five blocks per row: Q4_0/Q5_0/Q8_0 rows start at every even alignment.
            check_matmul(&ctx, label, vector, dtype, 2, 160, 33, 25 + i as u64);
            if has_batch {
                // A full group of eight tokens and a partial one; one token alone.
                check_matmul(&ctx, label, batch, dtype, 13, 576, 77, 30 + i as u64);
                check_matmul(&ctx, label, batch, dtype, 1, 160, 33, 35 + i as u64);
            }
        }
        for (i, dtype) in K_DTYPES.into_iter().enumerate() {
            check_matmul(&ctx, label, vector, dtype, 1, 512, 200, 80 + i as u64);
            check_matmul(&ctx, label, vector, dtype, 3, 1536, 77, 83 + i as u64);
            // Three super-blocks per row: Q6_K rows (630 bytes) start at both even alignments.
            check_matmul(&ctx, label, vector, dtype, 2, 768, 33, 86 + i as u64);
            if has_batch {
                check_matmul(&ctx, label, batch, dtype, 9, 768, 33, 89 + i as u64);
            }
        }
    }
}

/// The gated kernels (gate and up rows in one buffer, SiLU in the epilogue): GPUs' decode kernels,
/// per token and batched, and CPU adapters' rowwise products, for every weight type; odd output
/// counts leave a workgroup half full.
#[test]
fn gated_matvec_matches_reference_for_every_dtype() {
    let mut contexts = contexts();
    // The rowwise products without subgroups, whose invocations take four gate and up pairs.
    let cpu_plain = gpu(GpuOptions {
        disable_subgroups: true,
        ..Default::default()
    });
    if cpu_plain.features().cpu {
        contexts.push(("cpu-plain", cpu_plain));
    }
    for (label, ctx) in contexts {
        let f = ctx.features();
        for (i, dtype) in DTYPES.into_iter().chain(K_DTYPES).enumerate() {
            let n_in = if K_DTYPES.contains(&dtype) { 512 } else { 576 };
            // The GPU kernels exist exactly where the batched kernel does, and the rowwise ones
            // on every CPU adapter but for the 8-bit products: never left out there.
            let rowwise =
                f.cpu && !(f.dot4 && matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0));
            let decode = Matmul::has_batch(f) || rowwise;
            let runs = [
                (MatmulKernel::Vector, 1, 97, decode),
                (MatmulKernel::Vector, 3, 64, decode),
                (MatmulKernel::VectorBatch, 13, 77, Matmul::has_batch(f)),
                (MatmulKernel::Tiled, 13, 77, rowwise),
            ];
            for (j, (kind, n, n_ff, expected)) in runs.into_iter().enumerate() {
                let seed = 200 + 10 * i as u64 + j as u64;
                let check = pollster::block_on(selftest::matmul_gated(
                    &ctx, kind, dtype, n, n_in, n_ff, seed,
                ))
                .unwrap();
                assert_eq!(check.is_some(), expected, "{label} {kind:?} {dtype}");
                if let Some(check) = check {
                    assert!(check.passed, "{label}: {check:?}");
                }
            }
        }
    }
}

#[test]
fn matmul_matches_reference_for_every_dtype() {
    let (vector, tiled) = (MatmulKernel::Vector, MatmulKernel::Tiled);
    let mut contexts = contexts();
    // CPU adapters have two row-per-lane kernels: with subgroups (shared activation loads, spread
    // over 8 lanes or over 4) and without.
    let cpu_plain = gpu(GpuOptions {
        disable_subgroups: true,
        ..Default::default()
    });
    let cpu_4_lanes = gpu(GpuOptions {
        subgroup_min_size: Some(4),
        ..Default::default()
    });
    if cpu_plain.features().cpu {
        contexts.push(("cpu-plain", cpu_plain));
    }
    if cpu_4_lanes.features().cpu && cpu_4_lanes.features().subgroups {
        assert_eq!(cpu_4_lanes.features().subgroup_min_size, 4);
        contexts.push(("cpu-4-lanes", cpu_4_lanes));
    }
    for (label, ctx) in contexts {
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            // Token and output counts that are not multiples of the tiles.
            check_matmul(&ctx, label, tiled, dtype, 37, 576, 130, 30 + i as u64);
            check_matmul(&ctx, label, tiled, dtype, 8, 160, 64, 40 + i as u64);
        }
        for (i, dtype) in K_DTYPES.into_iter().enumerate() {
            check_matmul(&ctx, label, tiled, dtype, 37, 768, 130, 90 + i as u64);
            check_matmul(&ctx, label, tiled, dtype, 8, 256, 64, 93 + i as u64);
        }
        // More tokens than one tile holds (64 in the GPU kernels), so that a second row of
        // tiles runs.
        check_matmul(&ctx, label, tiled, DType::Q4_0, 130, 576, 130, 52);
        check_matmul(&ctx, label, tiled, DType::F16, 130, 160, 70, 53);
        // Fewer outputs than an invocation's rows in the rowwise products (four, or eight
        // without subgroups).
        check_matmul(&ctx, label, tiled, DType::Q4_0, 3, 576, 5, 54);
        check_matmul(&ctx, label, vector, DType::Q4_1, 1, 576, 3, 55);
        // More outputs than a rowwise workgroup covers (256), so that a second workgroup runs.
        check_matmul(&ctx, label, vector, DType::Q4_0, 1, 160, 600, 56);
        // A K that is not a multiple of the K tile (f32 rows need only be multiples of 4).
        check_matmul(&ctx, label, tiled, DType::F32, 33, 52, 70, 50);
        check_matmul(&ctx, label, vector, DType::F32, 2, 52, 70, 51);
        check_matmul(&ctx, label, vector, DType::F16, 1, 52, 70, 57);
        if Matmul::has_batch(ctx.features()) {
            check_matmul(
                &ctx,
                label,
                MatmulKernel::VectorBatch,
                DType::F32,
                9,
                52,
                70,
                58,
            );
        }
    }
}

#[test]
fn matmul_splits_weights_over_bindings() {
    let (vector, tiled) = (MatmulKernel::Vector, MatmulKernel::Tiled);
    // Each buffer holds at most 24 KiB: the 200 x 576 matrices span several. The GPU shapes,
    // the adapter's own, and (on a CPU adapter) the plain rowwise product.
    for (gpu_kernels_on_cpu, disable_subgroups) in [(true, false), (false, false), (false, true)] {
        let ctx = gpu(GpuOptions {
            max_binding_size: Some(24 * 1024),
            gpu_kernels_on_cpu,
            disable_subgroups,
            ..Default::default()
        });
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            check_matmul(&ctx, "split", vector, dtype, 1, 576, 200, 60 + i as u64);
            check_matmul(&ctx, "split", tiled, dtype, 40, 576, 200, 70 + i as u64);
        }
        for (i, dtype) in K_DTYPES.into_iter().enumerate() {
            check_matmul(&ctx, "split", vector, dtype, 1, 768, 200, 96 + i as u64);
            check_matmul(&ctx, "split", tiled, dtype, 40, 768, 200, 99 + i as u64);
        }
    }
}

/// Attention against the reference (`sovereign::kernels::selftest::attention`).
#[allow(clippy::too_many_arguments)]
fn check_attention(
    ctx: &GpuContext,
    kv_type: KvType,
    path: AttentionPath,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    pos0: usize,
    n_tokens: usize,
    seed: u64,
) {
    let check = pollster::block_on(selftest::attention(
        ctx, kv_type, path, n_head, n_head_kv, head_dim, pos0, n_tokens, seed,
    ))
    .unwrap();
    assert!(check.passed, "{check:?}");
}

#[test]
fn attention_matches_reference_for_prefill_and_decode() {
    let ctx = gpu(GpuOptions::default());
    for kv_type in kv_types(&ctx) {
        for path in AttentionPath::ALL {
            let check = |n_head, n_head_kv, head_dim, pos0, n_tokens, seed| {
                check_attention(
                    &ctx, kv_type, path, n_head, n_head_kv, head_dim, pos0, n_tokens, seed,
                )
            };
            // Prefill from position 0 (causal mask within the step), GQA 3:1 as in SmolLM2:
            // several blocks of 21 tokens, the last one partial.
            check(9, 3, 64, 0, 70, 90);
            // Prefill continuing a cache.
            check(4, 1, 128, 50, 20, 91);
            // Decode at several context lengths, MHA and MQA.
            for (i, pos0) in [0usize, 63, 64, 700, 2047].into_iter().enumerate() {
                check(9, 3, 64, pos0, 1, 92 + i as u64);
            }
            check(8, 8, 32, 130, 1, 99);
            // Heads of 256 (6 keys per tile in the tiled kernel), MQA with 8 query heads.
            check(8, 1, 256, 33, 2, 100);
            // A long prompt over a long cache, GQA 4:1 as in Llama 3.
            check(8, 2, 128, 300, 40, 101);
            // Near a 4096-token context: the tiled kernel's longest invocations (on lavapipe
            // they must stay under llvmpipe's loop limit).
            check(9, 3, 64, 4000, 3, 102);
            check(8, 2, 128, 4000, 2, 103);
        }
    }
}

#[test]
fn silu_mul_matches_reference() {
    let ctx = gpu(GpuOptions::default());
    let mut rng = Rng::new(110);
    let (n_tokens, n) = (3usize, 1536usize);
    let gate = rng.vec(n_tokens * n, 6.0);
    let up = rng.vec(n_tokens * n, 2.0);
    let gb = zeros(&ctx, n_tokens * n);
    let gate_up = storage(&ctx, &reference::join_rows(&gate, &up, n));
    let s = step(&ctx, 4);
    let d = pollster::block_on(SiluMul::new(&ctx))
        .unwrap()
        .bind(&ctx, s.buffer(), &gate_up, &gb, n as u32, 3)
        .unwrap();
    run(&ctx, &[&d], 0, &[0; 3], &s);
    assert_close(
        "silu_mul",
        &read_f32(&ctx, &gb, gate.len()),
        &reference::silu_mul(&gate, &up),
        1e-6,
        1e-5,
    );
}

#[test]
fn argmax_matches_reference_and_breaks_ties_low() {
    let ctx = gpu(GpuOptions::default());
    let mut rng = Rng::new(120);
    let n = 49152usize;
    let mut x = rng.vec(3 * n, 10.0);
    // Row 1: a tie between a late and an early index; the early one wins.
    x[n + 40000] = 50.0;
    x[n + 7] = 50.0;
    // Row 2: the maximum in the last slot.
    x[3 * n - 1] = 99.0;
    let out = storage(&ctx, &[0.0; 3]);
    let s = step(&ctx, 4);
    let d = pollster::block_on(Argmax::new(&ctx))
        .unwrap()
        .bind(&ctx, s.buffer(), &storage(&ctx, &x), &out, n as u32, 3)
        .unwrap();
    // Three output rows: one per token.
    run(&ctx, &[&d], 0, &[0, 0, 0], &s);
    let got = read_u32(&ctx, &out, 3);
    let want: Vec<u32> = x.chunks(n).map(|r| reference::argmax(r) as u32).collect();
    assert_eq!(got, want);
    assert_eq!(got[1], 7);
    assert_eq!(got[2], n as u32 - 1);
}

/// Two sequences in slots 1 and 3 whose pages lie scattered through the pool: one step stores
/// their new K/V (kv_store) and attends over each sequence's own positions (attention), as the
/// reference does on each sequence's contiguous cache.
#[test]
fn paged_kv_store_and_attention_match_reference() {
    let ctx = gpu(GpuOptions::default());
    let mut rng = Rng::new(130);
    let (n_head, n_head_kv, head_dim) = (4usize, 2usize, 32usize);
    let (q_row, kv_row) = (n_head * head_dim, n_head_kv * head_dim);
    let n_pages = 20u32;
    let pool_rows = (n_pages * PAGE) as usize;
    // (slot, pages, length before the step, new tokens): the first sequence spans two splits
    // of flash-decoding's keys.
    let seqs: [(u32, Vec<u32>, usize, usize); 2] = [
        (1, vec![5, 2, 9, 12, 19, 3, 14, 11, 17, 1], 150, 3),
        (3, vec![0, 7], 21, 2),
    ];
    for kv_type in kv_types(&ctx) {
        let mut k_pool = vec![0.0f32; pool_rows * kv_row];
        let mut v_pool = vec![0.0f32; pool_rows * kv_row];
        let (mut tokens, mut positions, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        let (mut q, mut k_new, mut v_new) = (Vec::new(), Vec::new(), Vec::new());
        let mut want_out = Vec::new();
        let mut want_k = k_pool.clone();
        let mut want_v = v_pool.clone();
        let row_of = |pages: &[u32], pos: usize| {
            pages[pos / PAGE as usize] as usize * PAGE as usize + pos % PAGE as usize
        };
        for (slot, pages, len, n_new) in &seqs {
            // Cached positions 0..len, then n_new new ones.
            let total = len + n_new;
            let mut k = rng.vec(total * kv_row, 1.0);
            let mut v = rng.vec(total * kv_row, 1.0);
            reference::round_kv(&mut k, kv_type);
            reference::round_kv(&mut v, kv_type);
            for pos in 0..total {
                let r = row_of(pages, pos);
                let src = pos * kv_row..(pos + 1) * kv_row;
                want_k[r * kv_row..(r + 1) * kv_row].copy_from_slice(&k[src.clone()]);
                want_v[r * kv_row..(r + 1) * kv_row].copy_from_slice(&v[src.clone()]);
                if pos < *len {
                    k_pool[r * kv_row..(r + 1) * kv_row].copy_from_slice(&k[src.clone()]);
                    v_pool[r * kv_row..(r + 1) * kv_row].copy_from_slice(&v[src]);
                }
            }
            let q_seq = rng.vec(n_new * q_row, 1.0);
            let shape = AttentionShape {
                n_head,
                n_head_kv,
                head_dim,
                scale: 0.2,
            };
            want_out.extend(reference::attention(&q_seq, &k, &v, *len, shape));
            q.extend(q_seq);
            k_new.extend_from_slice(&k[len * kv_row..]);
            v_new.extend_from_slice(&v[len * kv_row..]);
            for pos in *len..total {
                tokens.push(0);
                positions.push(pos as u32);
                slots.push(*slot);
            }
        }
        let kc = kv_storage(&ctx, kv_type, &k_pool, kv_row);
        let vc = kv_storage(&ctx, kv_type, &v_pool, kv_row);
        let n = tokens.len();
        let s = step(&ctx, n as u32);
        // Rows of k | v (no Q here), as the projections write them after their Q.
        let kv_new: Vec<f32> = k_new
            .chunks(kv_row)
            .zip(v_new.chunks(kv_row))
            .flat_map(|(k, v)| k.iter().chain(v).copied())
            .collect();
        // No rotation: n_rot covers the head but freq_scale 0 makes every angle 0.
        let store = pollster::block_on(KvStore::new(&ctx, kv_type)).unwrap();
        let store = store
            .bind(
                &ctx,
                s.buffer(),
                &storage(&ctx, &kv_new),
                &kc,
                &vc,
                KvStoreParams {
                    n_head_kv: n_head_kv as u32,
                    head_dim: head_dim as u32,
                    n_rot: head_dim as u32,
                    neox: 0,
                    freq_base: 10_000.0,
                    freq_scale: 0.0,
                    kv_stride: kv_row as u32,
                    src_stride: 2 * kv_row as u32,
                    k_col0: 0,
                    v_col0: kv_row as u32,
                    n_head: 0,
                    ..Default::default()
                },
                n as u32,
                pool_rows as u32,
            )
            .unwrap();
        for path in AttentionPath::ALL {
            let out = zeros(&ctx, n * q_row);
            let attn = pollster::block_on(Attention::of_path(&ctx, kv_type, path, head_dim as u32))
                .unwrap();
            let params = AttentionParams {
                n_head: n_head as u32,
                n_head_kv: n_head_kv as u32,
                head_dim: head_dim as u32,
                q_stride: q_row as u32,
                kv_stride: kv_row as u32,
                scale: 0.2,
                out_stride: q_row as u32,
                _pad1: 0,
            };
            // Splits reach the furthest position of the step.
            let n_ctx = positions.iter().max().unwrap() + 1;
            let partials = zeros(
                &ctx,
                Attention::partials_len(&params, n as u32, n_ctx) as usize,
            );
            let attn = attn
                .bind_path(
                    &ctx,
                    s.buffer(),
                    &storage(&ctx, &q),
                    &kc,
                    &vc,
                    &partials,
                    &out,
                    params,
                    n as u32,
                    pool_rows as u32,
                    n_ctx,
                )
                .unwrap();
            let tables: Vec<(u32, &[u32])> = seqs
                .iter()
                .map(|(slot, pages, ..)| (*slot, &pages[..]))
                .collect();
            let input = StepInput {
                tokens: &tokens,
                positions: &positions,
                slots: &slots,
                out_rows: &[],
                tables: &tables,
            };
            let dispatches: Vec<_> = [&store].into_iter().chain(&attn).collect();
            run_step(&ctx, &dispatches, &input, &s);
            let read = |b| read_kv(&ctx, kv_type, b, pool_rows, kv_row);
            // The new K/V are already rounded as the cache holds them, so storing them again
            // keeps them exactly (Q8_0: a block's rounded values requantize to themselves).
            assert_close(&format!("paged K {kv_type}"), &read(&kc), &want_k, 0.0, 0.0);
            assert_close(&format!("paged V {kv_type}"), &read(&vc), &want_v, 0.0, 0.0);
            assert_close(
                &format!("paged attention {kv_type} {path:?}"),
                &read_f32(&ctx, &out, n * q_row),
                &want_out,
                2e-5,
                1e-4,
            );
        }
    }
}

/// The in-process pass the browser runs (`sovereign::kernels::selftest`) passes here too, in
/// every kernel shape this adapter has.
#[test]
fn selftest_passes_on_every_kernel_shape() {
    for (label, ctx) in contexts() {
        let checks = pollster::block_on(sovereign::kernels::selftest::run_all(&ctx)).unwrap();
        assert!(checks.len() >= 25, "{label}: only {} checks", checks.len());
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{label}: {failed:#?}");
    }
}

/// On a CPU adapter with subgroups the loader times both rowwise products once per context and
/// keeps the faster; the choice is written to the file given and read back, without measuring,
/// by a later context on the same adapter. A pinned choice is never measured.
#[test]
fn cpu_products_are_measured_once_and_remembered() {
    use sovereign::gpu::CpuProducts;
    use sovereign::kernels::cpu_products;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cpu-products.json");
    let context = |cpu_products| {
        gpu(GpuOptions {
            cpu_products,
            cpu_products_file: Some(file.clone()),
            ..Default::default()
        })
    };
    let choose = |ctx: &GpuContext| {
        pollster::block_on(cpu_products::choose(ctx, DType::Q4_1, 1536, 576)).unwrap()
    };
    let ctx = context(CpuProducts::Measure);
    let f = ctx.features();
    if !(f.cpu && f.subgroups) {
        assert_eq!(
            choose(&ctx),
            None,
            "nothing to choose on {}",
            ctx.adapter_info().name
        );
        return;
    }
    let measured = choose(&ctx).expect("a CPU adapter with subgroups measures its products");
    let (broadcast_ms, plain_ms) = measured.measured_ms.expect("measured, not read");
    assert!(broadcast_ms > 0.0 && plain_ms > 0.0, "{measured:?}");
    assert_eq!(ctx.features().cpu_broadcast, !measured.plain);
    // Once per context.
    assert_eq!(choose(&ctx), None);
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(
        saved.contains(if measured.plain {
            "\"plain\""
        } else {
            "\"broadcast\""
        }),
        "{saved}"
    );
    // Read back by the next context, not measured again.
    let again = context(CpuProducts::Measure);
    let read = choose(&again).unwrap();
    assert_eq!(read.plain, measured.plain);
    assert_eq!(read.measured_ms, None);
    assert_eq!(again.features().cpu_broadcast, !measured.plain);
    // Another kind of product is measured for itself.
    let other = context(CpuProducts::Measure);
    let q8 = pollster::block_on(cpu_products::choose(&other, DType::Q8_0, 1024, 576)).unwrap();
    assert!(q8.unwrap().measured_ms.is_some());
    // Pinned choices.
    for (products, broadcasts) in [(CpuProducts::Broadcast, true), (CpuProducts::Plain, false)] {
        let pinned = context(products);
        assert_eq!(choose(&pinned), None);
        assert_eq!(pinned.features().cpu_broadcast, broadcasts);
    }
}

/// Q is rotated in place while the same dispatch reads K and V from the same rows: a layout in
/// which Q's heads reach into K's or V's columns is refused.
#[test]
fn kv_store_refuses_q_over_k_or_v() {
    let ctx = gpu(GpuOptions::default());
    let op = pollster::block_on(KvStore::new(&ctx, KvType::F32)).unwrap();
    let (n_head_kv, head_dim) = (2u32, 64u32);
    let row = n_head_kv * head_dim;
    let s = step(&ctx, 4);
    let cache = zeros(&ctx, 16 * row as usize);
    for (n_head, k_col0, v_col0, ok) in [
        (4, 4 * head_dim, 4 * head_dim + row, true),
        // Five Q heads where four fit before K.
        (5, 4 * head_dim, 4 * head_dim + row, false),
        // V first, then K: Q must end before V.
        (4, 3 * head_dim + row, 3 * head_dim, false),
    ] {
        let src_stride = n_head.max(5) * head_dim + 2 * row;
        let qkv = zeros(&ctx, 4 * src_stride as usize);
        let params = KvStoreParams {
            n_head_kv,
            head_dim,
            n_rot: head_dim,
            neox: 0,
            freq_base: 10_000.0,
            freq_scale: 1.0,
            kv_stride: row,
            src_stride,
            k_col0,
            v_col0,
            n_head,
            ..Default::default()
        };
        let bound = op.bind(&ctx, s.buffer(), &qkv, &cache, &cache, params, 4, 16);
        assert_eq!(
            bound.is_ok(),
            ok,
            "{n_head} heads, K at {k_col0}, V at {v_col0}"
        );
        if let Err(e) = bound {
            assert!(e.to_string().contains("overlap"), "{e}");
        }
    }
}
