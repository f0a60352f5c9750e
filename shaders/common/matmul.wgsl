// Params of every y = x W^T shader (matvec, matvec_subgroup, matmul, matmul_rowwise). Needs
// common/step.wgsl and the including shader's `params: MatmulParams` and `y` bindings.

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
    // 1: add the product to y (a residual add folded into the projection), else overwrite y.
    accumulate: u32,
}

// Stores one output. Adding here saves a separate add kernel its pass over x and y; y + acc is
// the same float sum that kernel computed.
fn store_y(at: u32, acc: f32) {
    if (params.accumulate == 1u) {
        y[at] = y[at] + acc;
    } else {
        y[at] = acc;
    }
}

// Rows of x (and y) this step.
fn matmul_rows() -> u32 {
    return select(step.n_tokens, step.n_out, params.out_rows == 1u);
}
