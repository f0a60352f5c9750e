enable f16;
enable subgroups;
enable wgpu_cooperative_matrix;

//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_tiles.wgsl
//!include common/matmul_coop.wgsl

// Prefill products on matrix units with 8 x 8 x 8 fragments (common/matmul_coop.wgsl), where a
// driver lists only those (lavapipe since Mesa 26): 32 x 32 tiles, four subgroups.

const FRAG: u32 = 8u;
alias frag_a = coop_mat8x8<f16, A>;
alias frag_b = coop_mat8x8<f16, B>;
alias frag_c = coop_mat8x8<f32, C>;
