enable f16;
enable subgroups;
enable wgpu_cooperative_matrix;

//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_tiles.wgsl
//!include common/matmul_coop.wgsl

// Prefill products on matrix units with 16 x 16 x 16 fragments (common/matmul_coop.wgsl): the
// shape GPUs' drivers list (64 x 64 tiles, four subgroups of the adapter's one size).

const FRAG: u32 = 16u;
alias frag_a = coop_mat16x16<f16, A>;
alias frag_b = coop_mat16x16<f16, B>;
alias frag_c = coop_mat16x16<f32, C>;
