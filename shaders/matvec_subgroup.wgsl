enable subgroups;
//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matvec_x_f32.wgsl
//!include common/matvec_subgroup.wgsl

// Decode: one token per workgroup, so that every token of a step runs at once.
const TOKENS: u32 = 1u;
