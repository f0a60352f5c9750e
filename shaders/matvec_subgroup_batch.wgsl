enable subgroups;
//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matvec_x_f32.wgsl
//!include common/matvec_subgroup.wgsl

// Batched decode (a token from each of several sequences): eight tokens per workgroup share
// each weight chunk's trip from memory.
const TOKENS: u32 = 8u;
