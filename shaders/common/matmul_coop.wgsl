// The body of matmul_coop.wgsl and matmul_coop8.wgsl: y = x W^T for many tokens (prefill) on
// the GPU's matrix units, through cooperative matrices (f16 inputs, f32 sums). Each workgroup
// computes a TILE_M x TILE_N block of y (tokens x output features) with four subgroups, each a
// quarter as 2 x 2 fragments. Per step along K, a TILE_M x TILE_K tile of x and a TILE_N x
// TILE_K tile of W (dequantized once) are staged in workgroup memory as f16, both K-fastest: x
// as the row-major A operand and W as the column-major B operand (B = W^T), so neither needs a
// transpose. The sums go through workgroup memory on their way out, so that partial tiles, the
// residual add and the logits' layout are stored by the same store_y as in the other products.
//
// The f16 staging rounds each weight and activation to 11 significant bits, as llama.cpp's
// matrix-unit path does; the sums stay f32. Needs common/step.wgsl, common/matmul.wgsl,
// common/weights.wgsl and common/matmul_tiles.wgsl, and the including shader's FRAG and
// fragment aliases.

override W_DTYPE: u32 = 0u;
// Four subgroups: the host sets this to four times the adapter's (fixed) subgroup size.
override WG_SIZE: u32 = 128u;

// Each subgroup computes a quarter of the tile as 2 x 2 fragments of FRAG x FRAG (the including
// shader's const and frag_a, frag_b, frag_c aliases), and a step along K is two fragments deep.
const TILE_M: u32 = 4u * FRAG;
const TILE_N: u32 = 4u * FRAG;
const TILE_K: u32 = 2u * FRAG;
const QUARTER: u32 = 2u * FRAG;
// Rows of the staged tiles are padded by 8 halves (16 bytes), so that the rows one fragment
// load touches do not all start on the same memory bank.
const STRIDE_K: u32 = TILE_K + 8u;
const STRIDE_N: u32 = TILE_N + 4u;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<f32>;        // (n_tokens, x_stride)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

// 27 KiB in all with 16 x 16 fragments, 7.5 KiB with 8 x 8; the host checks the adapter's limit
// against this (coop_workgroup_bytes).
var<workgroup> x_tile: array<f16, TILE_M * STRIDE_K>;  // (TILE_M tokens, TILE_K)
var<workgroup> w_tile: array<f16, TILE_N * STRIDE_K>;  // (TILE_N features, TILE_K)
var<workgroup> y_tile: array<f32, TILE_M * STRIDE_N>;  // (TILE_M tokens, TILE_N features)

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let n0 = (wid.x + wid.z * nwg.x) * TILE_N;
    let m0 = wid.y * TILE_M;
    let n_tokens = matmul_rows();
    // This subgroup's quarter: tokens qm.., features qn.. of the tile.
    let qm = (sg / 2u) * QUARTER;
    let qn = (sg % 2u) * QUARTER;
    var c00 = frag_c();
    var c01 = frag_c();
    var c10 = frag_c();
    var c11 = frag_c();
    let quads = TILE_K / 4u;

    for (var k0 = 0u; k0 < params.n_in; k0 += TILE_K) {
        // K-fastest: neighbouring threads read neighbouring bytes of one weight row.
        for (var i = lid; i < TILE_N * quads; i += WG_SIZE) {
            let n = i / quads;
            let kq = i % quads;
            let w = tile_weights4(n0 + n, k0 + kq * 4u);
            let at = n * STRIDE_K + kq * 4u;
            w_tile[at] = f16(w.x);
            w_tile[at + 1u] = f16(w.y);
            w_tile[at + 2u] = f16(w.z);
            w_tile[at + 3u] = f16(w.w);
        }
        for (var i = lid; i < TILE_M * quads; i += WG_SIZE) {
            let m = i / quads;
            let kq = i % quads;
            let v = tile_x4(m0 + m, n_tokens, k0 + kq * 4u);
            let at = m * STRIDE_K + kq * 4u;
            x_tile[at] = f16(v.x);
            x_tile[at + 1u] = f16(v.y);
            x_tile[at + 2u] = f16(v.z);
            x_tile[at + 3u] = f16(v.w);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk += FRAG) {
            let a0 = coopLoadT<frag_a>(&x_tile[qm * STRIDE_K + kk], STRIDE_K);
            let a1 = coopLoadT<frag_a>(&x_tile[(qm + FRAG) * STRIDE_K + kk], STRIDE_K);
            let b0 = coopLoad<frag_b>(&w_tile[qn * STRIDE_K + kk], STRIDE_K);
            let b1 = coopLoad<frag_b>(&w_tile[(qn + FRAG) * STRIDE_K + kk], STRIDE_K);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }

    coopStoreT(c00, &y_tile[qm * STRIDE_N + qn], STRIDE_N);
    coopStoreT(c01, &y_tile[qm * STRIDE_N + qn + FRAG], STRIDE_N);
    coopStoreT(c10, &y_tile[(qm + FRAG) * STRIDE_N + qn], STRIDE_N);
    coopStoreT(c11, &y_tile[(qm + FRAG) * STRIDE_N + qn + FRAG], STRIDE_N);
    workgroupBarrier();
    for (var i = lid; i < TILE_M * TILE_N; i += WG_SIZE) {
        let m = i / TILE_N;
        let n = i % TILE_N;
        if (m0 + m < n_tokens && n0 + n < params.n_out) {
            store_y((m0 + m) * params.y_stride + params.out_col0 + n0 + n, y_tile[m * STRIDE_N + n]);
        }
    }
}
