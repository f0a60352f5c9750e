enable subgroups;
//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/q8_dot.wgsl
//!include common/matvec_x_q8.wgsl
//!include common/matvec_subgroup.wgsl

// matvec_subgroup_batch.wgsl against activations quantized to 8-bit planes
// (common/matvec_x_q8.wgsl).

// Batched decode (a token from each of several sequences): eight tokens per workgroup share
// each weight chunk's trip from memory.
const TOKENS: u32 = 8u;
