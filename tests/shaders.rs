//! Every shader variant parses, validates and compiles to SPIR-V with naga (no GPU needed), and
//! every params struct has the same layout in Rust and WGSL.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use sovereign::kernels::{self, GpuParams, shader_source};

fn parse(shader: &str) -> naga::Module {
    let source = shader_source(shader).unwrap();
    naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{shader}: {}", e.emit_to_string(&source)))
}

fn capabilities(shader: &str) -> Capabilities {
    // The plain variants must validate with no optional capability at all: they are the path
    // that runs on every adapter.
    // unpack2x16float is core WGSL; naga files it under this capability, which every
    // WebGPU-compliant adapter has.
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if shader.contains("subgroup") {
        caps |= Capabilities::SUBGROUP;
    }
    if shader.ends_with("_f16") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if shader.starts_with("matmul_coop") {
        caps |= Capabilities::SHADER_FLOAT16
            | Capabilities::SUBGROUP
            | Capabilities::COOPERATIVE_MATRIX;
    }
    caps
}

#[test]
fn every_variant_validates_and_compiles() {
    let variants = kernels::all_variants();
    assert!(variants.len() >= 20, "only {} variants", variants.len());
    for v in variants {
        let module = parse(v.shader);
        let caps = capabilities(v.shader);
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", v.shader));
        let mut constants = PipelineConstants::default();
        for (k, value) in &v.constants {
            constants.insert(k.to_string(), *value);
        }
        let (module, _) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((naga::ShaderStage::Compute, "main")),
            &constants,
        )
        .unwrap_or_else(|e| panic!("{} {:?}: {e:?}", v.shader, v.constants));
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} {:?} after overrides: {e:?}", v.shader, v.constants));
        let options = naga::back::spv::Options::default();
        naga::back::spv::write_vec(&module, &info, &options, None)
            .unwrap_or_else(|e| panic!("{} {:?} to SPIR-V: {e:?}", v.shader, v.constants));
    }
}

#[test]
fn every_shader_file_is_used() {
    let used: Vec<_> = kernels::all_variants()
        .iter()
        .map(|v| format!("{}.wgsl", v.shader))
        .collect();
    for (path, _) in kernels::source::SHADER_FILES {
        if !path.starts_with("common/") {
            assert!(used.contains(&path.to_string()), "{path} has no variant");
        }
    }
}

#[test]
fn shader_files_on_disk_are_all_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = Vec::new();
    for sub in ["", "common/"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".wgsl") {
                on_disk.push(format!("{sub}{name}"));
            }
        }
    }
    for f in &on_disk {
        assert!(
            kernels::source::SHADER_FILES.iter().any(|(p, _)| p == f),
            "shaders/{f} is not in SHADER_FILES"
        );
    }
    assert_eq!(on_disk.len(), kernels::source::SHADER_FILES.len());
}

fn check_layout<P: GpuParams>(shader: &str) {
    let module = parse(shader);
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let (handle, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(P::WGSL_NAME))
        .unwrap_or_else(|| panic!("{shader} has no struct {}", P::WGSL_NAME));
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{} is not a struct", P::WGSL_NAME)
    };
    let rust = P::fields();
    let wgsl: Vec<_> = members
        .iter()
        .map(|m| {
            (
                m.name.clone().unwrap(),
                m.offset as usize,
                layouter[m.ty].size as usize,
            )
        })
        .collect();
    // The Step header is followed by the runtime-sized token array in WGSL.
    let wgsl = &wgsl[..rust.len().min(wgsl.len())];
    assert_eq!(
        rust.iter()
            .map(|(n, o, s)| (n.to_string(), *o, *s))
            .collect::<Vec<_>>(),
        wgsl,
        "{} in {shader}",
        P::WGSL_NAME
    );
    if P::WGSL_NAME != "Step" {
        assert_eq!(
            std::mem::size_of::<P>(),
            *span as usize,
            "size of {}",
            P::WGSL_NAME
        );
        assert_eq!(layouter[handle].size as usize, std::mem::size_of::<P>());
    }
}

#[test]
fn params_layouts_match_wgsl() {
    use sovereign::kernels::*;
    check_layout::<Step>("silu_mul");
    check_layout::<argmax::ArgmaxParams>("argmax");
    check_layout::<attention::AttentionParams>("attention");
    check_layout::<attention::AttentionParams>("attention_f16");
    check_layout::<attention::AttentionParams>("attention_q8");
    check_layout::<attention::AttentionParams>("attention_tiled");
    check_layout::<attention::AttentionMergeParams>("attention_merge");
    check_layout::<kv_store::KvStoreParams>("kv_store");
    check_layout::<kv_store::KvStoreParams>("kv_store_f16");
    check_layout::<kv_store::KvStoreParams>("kv_store_q8");
    check_layout::<embed::EmbedParams>("embed");
    check_layout::<matmul::MatmulParams>("matvec");
    check_layout::<matmul::MatmulParams>("matvec_subgroup");
    check_layout::<matmul::MatmulParams>("matvec_subgroup_batch");
    check_layout::<matmul::MatmulParams>("matmul");
    check_layout::<matmul::MatmulParams>("matmul_rowwise");
    check_layout::<rms_norm::RmsNormParams>("rms_norm");
    check_layout::<silu_mul::SiluMulParams>("silu_mul");
}
