enable subgroups;
//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/q8_dot.wgsl
//!include common/matvec_x_q8.wgsl
//!include common/matvec_subgroup.wgsl

// matvec_subgroup.wgsl against activations quantized to 8-bit planes
// (common/matvec_x_q8.wgsl).

// Decode: one token per workgroup, so that every token of a step runs at once.
const TOKENS: u32 = 1u;
