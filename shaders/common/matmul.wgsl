// Params of every y = x W^T shader (matvec, matvec_subgroup, matmul, matmul_rowwise). Needs
// common/step.wgsl and the including shader's `params: MatmulParams` binding.

struct MatmulParams {
    // Input features: elements per weight row and per x row.
    n_in: u32,
    // Weight rows in this buffer (output features it produces).
    n_out: u32,
    // Bytes per weight row in W_DTYPE's layout.
    row_bytes: u32,
    // Output column of this buffer's first row (weights split by rows over several buffers).
    out_col0: u32,
    // Elements between consecutive rows of x and of y.
    x_stride: u32,
    y_stride: u32,
    // 1: the rows of x and y are the step's n_out output rows (the logits), else its n_tokens.
    out_rows: u32,
    _pad: u32,
}

// Rows of x (and y) this step.
fn matmul_rows() -> u32 {
    return select(step.n_tokens, step.n_out, params.out_rows == 1u);
}
