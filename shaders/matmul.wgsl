//!include common/step.wgsl
//!include common/matmul.wgsl
//!include common/weights.wgsl
//!include common/matmul_tiles.wgsl

// y = x W^T for many tokens (prefill), tiled: each workgroup computes a TILE_M x TILE_N block
// of y (tokens x output features). Per step along K, a TILE_M x TILE_K tile of x and a
// TILE_N x TILE_K tile of W (dequantized once) go through workgroup memory; each thread keeps a
// 4 x 4 block of outputs in registers. Both tiles are stored K-major as vec4s of four tokens or
// four features, so that each step of the inner loop is two 16-byte reads: neighbouring threads
// read neighbouring vec4s (W) or the same one (x), and no two threads of a warp collide on a
// memory bank (a feature-major W tile would put every thread's reads on one bank).

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

var<workgroup> x_tile: array<vec4<f32>, TILE_K * TILE_M / 4u>;  // (TILE_K, TILE_M / 4)
var<workgroup> w_tile: array<vec4<f32>, TILE_K * TILE_N / 4u>;  // (TILE_K, TILE_N / 4)

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
        // K-fastest order: neighbouring threads read neighbouring bytes of one weight row (a
        // feature-fastest order, which would make the tile stores conflict-free, measured
        // slower on an H100: its loads touch a cache line per thread).
        for (var i = lid; i < TILE_N * quads; i += WG_SIZE) {
            let n = i / quads;
            let kq = i % quads;
            let w = tile_weights4(n0 + n, k0 + kq * 4u);
            let at = kq * 4u * (TILE_N / 4u) + n / 4u;
            let c = n % 4u;
            w_tile[at][c] = w.x;
            w_tile[at + TILE_N / 4u][c] = w.y;
            w_tile[at + 2u * (TILE_N / 4u)][c] = w.z;
            w_tile[at + 3u * (TILE_N / 4u)][c] = w.w;
        }
        for (var i = lid; i < TILE_M * quads; i += WG_SIZE) {
            let m = i / quads;
            let kq = i % quads;
            let v = tile_x4(m0 + m, n_tokens, k0 + kq * 4u);
            let at = kq * 4u * (TILE_M / 4u) + m / 4u;
            let c = m % 4u;
            x_tile[at][c] = v.x;
            x_tile[at + TILE_M / 4u][c] = v.y;
            x_tile[at + 2u * (TILE_M / 4u)][c] = v.z;
            x_tile[at + 3u * (TILE_M / 4u)][c] = v.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let w = w_tile[kk * (TILE_N / 4u) + tn];
            let xv = x_tile[kk * (TILE_M / 4u) + tm];
            acc[0] += xv.x * w;
            acc[1] += xv.y * w;
            acc[2] += xv.z * w;
            acc[3] += xv.w * w;
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
