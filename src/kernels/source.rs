//! The WGSL sources, compiled into the binary, and the one include step that joins a shader
//! with the helpers it names in `//!include` lines.

use super::KernelError;

/// Every file under `shaders/`, by its path there.
pub const SHADER_FILES: &[(&str, &str)] = &[
    (
        "common/attention.wgsl",
        include_str!("../../shaders/common/attention.wgsl"),
    ),
    (
        "common/kv_store.wgsl",
        include_str!("../../shaders/common/kv_store.wgsl"),
    ),
    (
        "common/rope.wgsl",
        include_str!("../../shaders/common/rope.wgsl"),
    ),
    (
        "attention_f16.wgsl",
        include_str!("../../shaders/attention_f16.wgsl"),
    ),
    ("kv_store.wgsl", include_str!("../../shaders/kv_store.wgsl")),
    (
        "kv_store_f16.wgsl",
        include_str!("../../shaders/kv_store_f16.wgsl"),
    ),
    (
        "common/step.wgsl",
        include_str!("../../shaders/common/step.wgsl"),
    ),
    (
        "common/weights.wgsl",
        include_str!("../../shaders/common/weights.wgsl"),
    ),
    (
        "common/weights_dot.wgsl",
        include_str!("../../shaders/common/weights_dot.wgsl"),
    ),
    ("add.wgsl", include_str!("../../shaders/add.wgsl")),
    ("argmax.wgsl", include_str!("../../shaders/argmax.wgsl")),
    (
        "attention.wgsl",
        include_str!("../../shaders/attention.wgsl"),
    ),
    ("embed.wgsl", include_str!("../../shaders/embed.wgsl")),
    ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
    (
        "matmul_rowwise.wgsl",
        include_str!("../../shaders/matmul_rowwise.wgsl"),
    ),
    ("matvec.wgsl", include_str!("../../shaders/matvec.wgsl")),
    (
        "matvec_subgroup.wgsl",
        include_str!("../../shaders/matvec_subgroup.wgsl"),
    ),
    ("rms_norm.wgsl", include_str!("../../shaders/rms_norm.wgsl")),
    ("rope.wgsl", include_str!("../../shaders/rope.wgsl")),
    ("silu_mul.wgsl", include_str!("../../shaders/silu_mul.wgsl")),
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
