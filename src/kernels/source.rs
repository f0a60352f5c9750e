//! The WGSL sources, compiled into the binary, and the one include step that joins a shader
//! with the helpers it names in `//!include` lines.

use super::KernelError;

/// `(path, contents)` of each named file under `shaders/`, compiled in.
macro_rules! shader_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../shaders/", $path)))),*]
    };
}

/// Every file under `shaders/`, by its path there (a test checks the list against the folder).
pub const SHADER_FILES: &[(&str, &str)] = shader_files![
    "common/attention.wgsl",
    "common/attention_dot.wgsl",
    "common/attention_io.wgsl",
    "common/attention_tiled.wgsl",
    "common/kv_plain.wgsl",
    "common/kv_q8.wgsl",
    "common/kv_store.wgsl",
    "common/kv_store_io.wgsl",
    "common/matmul.wgsl",
    "common/matmul_coop.wgsl",
    "common/matmul_rowwise.wgsl",
    "common/matmul_tiles.wgsl",
    "common/matvec_subgroup.wgsl",
    "common/matvec_x_f32.wgsl",
    "common/matvec_x_q8.wgsl",
    "common/q8_dot.wgsl",
    "common/rope.wgsl",
    "common/step.wgsl",
    "common/weights.wgsl",
    "common/weights_dot.wgsl",
    "argmax.wgsl",
    "attention.wgsl",
    "attention_f16.wgsl",
    "attention_merge.wgsl",
    "attention_q8.wgsl",
    "attention_tiled.wgsl",
    "attention_tiled_f16.wgsl",
    "attention_tiled_q8.wgsl",
    "embed.wgsl",
    "kv_store.wgsl",
    "kv_store_f16.wgsl",
    "kv_store_q8.wgsl",
    "matmul.wgsl",
    "matmul_coop.wgsl",
    "matmul_coop8.wgsl",
    "matmul_rowwise.wgsl",
    "matmul_rowwise_q8.wgsl",
    "matmul_rowwise_subgroup.wgsl",
    "matvec.wgsl",
    "matvec_subgroup.wgsl",
    "matvec_subgroup_batch.wgsl",
    "matvec_subgroup_batch_q8.wgsl",
    "matvec_subgroup_q8.wgsl",
    "quantize_q8.wgsl",
    "rms_norm.wgsl",
    "silu_mul.wgsl",
];

const INCLUDE: &str = "//!include ";

fn file(path: &str) -> Result<&'static str, KernelError> {
    SHADER_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, s)| *s)
        .ok_or_else(|| KernelError::UnknownShader(path.to_string()))
}

/// Whether an `enable` directive goes to the shader compiler. Browsers require
/// `enable subgroups;` before subgroup builtins, while naga (wgpu's native compiler) rejects the
/// directive and allows the builtins when the device has the feature; so the files carry the
/// standard directive and native builds drop it.
fn keep_enable(line: &str) -> bool {
    cfg!(target_arch = "wasm32") || !line.contains("subgroups")
}

/// The full source of `shaders/<name>.wgsl`: its `enable` directives first (WGSL wants them
/// before any declaration), then each included helper once, then the shader's own text.
pub fn shader_source(name: &str) -> Result<String, KernelError> {
    let main = file(&format!("{name}.wgsl"))?;
    let mut enables = String::new();
    let mut includes = Vec::new();
    let mut body = String::new();
    for line in main.lines() {
        if let Some(path) = line.strip_prefix(INCLUDE) {
            let path = path.trim();
            if !includes.contains(&path) {
                includes.push(path);
            }
        } else if line.starts_with("enable ") {
            if keep_enable(line) {
                enables.push_str(line);
                enables.push('\n');
            }
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    let mut out = enables;
    for path in includes {
        let helper = file(path)?;
        if helper.lines().any(|l| l.starts_with(INCLUDE)) {
            return Err(KernelError::NestedInclude(path.to_string()));
        }
        out.push_str(&format!("// ---- {path}\n"));
        out.push_str(helper);
        out.push('\n');
    }
    out.push_str(&format!("// ---- {name}.wgsl\n"));
    out.push_str(&body);
    Ok(out)
}
