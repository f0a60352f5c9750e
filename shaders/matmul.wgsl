//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl

// y = x W^T for many tokens (prefill), tiled: each workgroup computes a TILE_M x TILE_N block
// of y (tokens x output features). Per step along K, a TILE_M x TILE_K tile of x and a
// TILE_N x TILE_K tile of W (dequantized once) go through workgroup memory; each thread keeps a
// 4 x 4 block of outputs in registers.

override W_DTYPE: u32 = 0u;
// Tokens per tile, output features per tile (multiples of 4), and K per step (multiple of 4).
override TILE_M: u32 = 32u;
override TILE_N: u32 = 64u;
override TILE_K: u32 = 32u;
override WG_SIZE: u32 = (TILE_M / 4u) * (TILE_N / 4u);

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(3) var<storage, read> x: array<f32>;        // (n_tokens, x_stride)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

var<workgroup> x_tile: array<f32, TILE_M * TILE_K>;  // (TILE_M, TILE_K)
var<workgroup> w_tile: array<f32, TILE_N * TILE_K>;  // (TILE_N, TILE_K)

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n0 = (wid.x + wid.z * nwg.x) * TILE_N;
    let m0 = wid.y * TILE_M;
    let n_tokens = matmul_rows();
    // This thread's 4 x 4 block: tokens m0 + tm*4.., features n0 + tn*4..
    let tn = lid % (TILE_N / 4u);
    let tm = lid / (TILE_N / 4u);
    var acc: array<vec4<f32>, 4>;
    let quads = TILE_K / 4u;

    for (var k0 = 0u; k0 < params.n_in; k0 += TILE_K) {
        for (var i = lid; i < TILE_N * quads; i += WG_SIZE) {
            let n = i / quads;
            let k = k0 + (i % quads) * 4u;
            var w = vec4<f32>(0.0);
            if (n0 + n < params.n_out && k < params.n_in) {
                w = weights4((n0 + n) * params.row_bytes, k);
            }
            let at = n * TILE_K + (i % quads) * 4u;
            w_tile[at] = w.x;
            w_tile[at + 1u] = w.y;
            w_tile[at + 2u] = w.z;
            w_tile[at + 3u] = w.w;
        }
        for (var i = lid; i < TILE_M * quads; i += WG_SIZE) {
            let m = i / quads;
            let k = k0 + (i % quads) * 4u;
            let at = m * TILE_K + (i % quads) * 4u;
            if (m0 + m < n_tokens && k < params.n_in) {
                let x_at = (m0 + m) * params.x_stride + k;
                x_tile[at] = x[x_at];
                x_tile[at + 1u] = x[x_at + 1u];
                x_tile[at + 2u] = x[x_at + 2u];
                x_tile[at + 3u] = x[x_at + 3u];
            } else {
                x_tile[at] = 0.0;
                x_tile[at + 1u] = 0.0;
                x_tile[at + 2u] = 0.0;
                x_tile[at + 3u] = 0.0;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let w = vec4<f32>(
                w_tile[(tn * 4u) * TILE_K + kk],
                w_tile[(tn * 4u + 1u) * TILE_K + kk],
                w_tile[(tn * 4u + 2u) * TILE_K + kk],
                w_tile[(tn * 4u + 3u) * TILE_K + kk],
            );
            for (var i = 0u; i < 4u; i++) {
                acc[i] += x_tile[(tm * 4u + i) * TILE_K + kk] * w;
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let t = m0 + tm * 4u + i;
        if (t >= n_tokens) {
            break;
        }
        let y_at = t * params.y_stride + params.out_col0 + n0 + tn * 4u;
        for (var j = 0u; j < 4u; j++) {
            if (n0 + tn * 4u + j < params.n_out) {
                store_y(y_at + j, acc[i][j]);
            }
        }
    }
}
