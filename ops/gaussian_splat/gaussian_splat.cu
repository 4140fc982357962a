// Gaussian splatting into BEV (2-D Gaussians, GaussianFusion NeurIPS 2025) and into a voxel volume (3-D
// Gaussians, PFDepth ACM MM 2025): out[:, cell] = sum_g opacity_g exp(-d2/2) features_g over the Gaussians with
// Mahalanobis d2 <= 9 at the cell centre. Plain CUDA C++ (no torch headers): compile-checked with `nvcc -c` by
// tools/check_cuda_sources.sh; the torch binding is gaussian_splat_binding.cpp. Layouts follow
// perception/ops/gaussian_splat.py:
//   prm2 [G, 7]:  mx, my, cos, sin, 1/sx, 1/sy, opacity           (angle-parametrised 2-D Gaussians)
//   prm3 [G, 16]: m0, m1, m2, R (row-major 3x3), 1/s0, 1/s1, 1/s2, opacity  (u_b = sum_a R[a][b] d_a / s_b)
//   features [G, C]; out / grad_out [C, nx, ny] or [C, X, Y, Z] (channel-first).
// Forward: one block per tile of cells (one thread per cell) over the tile's Gaussian list (CSR ptr/lst built
// on the device by the caller): no atomics, deterministic. Backward: one block per Gaussian, which owns its
// gradients (block reductions, no atomics).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace {

constexpr int kCh = 8;              // channels accumulated per pass of the forward
constexpr int kBatch = 128;         // Gaussians staged in shared memory at a time
constexpr int kBwdThreads = 128;    // threads per Gaussian in the backward
constexpr double kCut2 = 9.0;       // 3-sigma cut-off, squared

__device__ inline float ex(float x) { return expf(x); }
__device__ inline double ex(double x) { return exp(x); }

// Cells whose centre lies within m +- half along one axis, padded by one cell: [lo, hi] (hi < lo if none).
__device__ inline void axis_range(double m, double half, double origin, double cell, int64_t n, int64_t* lo,
                                  int64_t* hi) {
  double a = ceil((m - half - origin) / cell - 0.5) - 1.0;
  double b = floor((m + half - origin) / cell - 0.5) + 1.0;
  a = fmax(a, 0.0);
  b = fmin(b, (double)(n - 1));
  if (!(a <= b)) {
    *lo = 0;
    *hi = -1;
    return;
  }
  *lo = (int64_t)a;
  *hi = (int64_t)b;
}

// Sum-reduce `n` doubles per thread over the block (blockDim.x == kBwdThreads); result in red[q][0].
template <int N>
__device__ inline void block_sum(double (*red)[kBwdThreads], const double* v) {
  for (int q = 0; q < N; ++q) red[q][threadIdx.x] = v[q];
  __syncthreads();
  for (int s = kBwdThreads / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s)
      for (int q = 0; q < N; ++q) red[q][threadIdx.x] += red[q][threadIdx.x + s];
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------------------------- 2-D
template <typename T>
__global__ void splat2d_forward(const T* __restrict__ prm, const T* __restrict__ feats,
                                const int64_t* __restrict__ ptr, const int64_t* __restrict__ lst, int64_t C, T x0,
                                T y0, T res, int64_t nx, int64_t ny, int tile, T* __restrict__ out) {
  __shared__ T sp[kBatch][7];
  __shared__ int64_t sg[kBatch];
  const int64_t ntj = (ny + tile - 1) / tile;
  const int64_t t = blockIdx.x;
  const int64_t i = (t / ntj) * tile + threadIdx.x / tile;
  const int64_t j = (t % ntj) * tile + threadIdx.x % tile;
  const bool inside = i < nx && j < ny;
  const T cx = x0 + ((T)i + (T)0.5) * res, cy = y0 + ((T)j + (T)0.5) * res;
  const int64_t e0 = ptr[t], e1 = ptr[t + 1];
  for (int64_t c0 = 0; c0 < C; c0 += kCh) {
    T acc[kCh];
    for (int q = 0; q < kCh; ++q) acc[q] = 0;
    for (int64_t b0 = e0; b0 < e1; b0 += kBatch) {
      const int nb = (int)((e1 - b0) < kBatch ? (e1 - b0) : kBatch);
      __syncthreads();
      for (int k = threadIdx.x; k < nb; k += blockDim.x) {
        const int64_t g = lst[b0 + k];
        sg[k] = g;
        for (int q = 0; q < 7; ++q) sp[k][q] = prm[g * 7 + q];
      }
      __syncthreads();
      if (!inside) continue;
      for (int k = 0; k < nb; ++k) {
        const T dx = cx - sp[k][0], dy = cy - sp[k][1];
        const T u = (sp[k][2] * dx + sp[k][3] * dy) * sp[k][4];
        const T v = (sp[k][2] * dy - sp[k][3] * dx) * sp[k][5];
        const T d2 = u * u + v * v;
        if (d2 <= (T)kCut2) {
          const T w = sp[k][6] * ex((T)-0.5 * d2);
          const T* f = feats + sg[k] * C + c0;
          for (int q = 0; q < kCh; ++q)
            if (c0 + q < C) acc[q] += w * f[q];
        }
      }
    }
    if (inside)
      for (int q = 0; q < kCh; ++q)
        if (c0 + q < C) out[(c0 + q) * nx * ny + i * ny + j] = acc[q];
  }
}

template <typename T>
__global__ void splat2d_backward(const T* __restrict__ grad_out, const T* __restrict__ prm,
                                 const T* __restrict__ feats, int64_t C, T x0, T y0, T res, int64_t nx, int64_t ny,
                                 T* __restrict__ g_means, T* __restrict__ g_scales, T* __restrict__ g_rots,
                                 T* __restrict__ g_opac, T* __restrict__ g_feats) {
  __shared__ double red[6][kBwdThreads];
  const int64_t g = blockIdx.x;
  const T* p = prm + g * 7;
  const T mx = p[0], my = p[1], c = p[2], s = p[3], isx = p[4], isy = p[5], alpha = p[6];
  const T sx = (T)1 / isx, sy = (T)1 / isy;
  const double hx = 3.0 * sqrt((double)(c * sx) * (c * sx) + (double)(s * sy) * (s * sy));
  const double hy = 3.0 * sqrt((double)(s * sx) * (s * sx) + (double)(c * sy) * (c * sy));
  int64_t i0, i1, j0, j1;
  axis_range(mx, hx, x0, res, nx, &i0, &i1);
  axis_range(my, hy, y0, res, ny, &j0, &j1);
  const int64_t ni = i1 >= i0 ? i1 - i0 + 1 : 0, nj = j1 >= j0 ? j1 - j0 + 1 : 0;
  const int64_t nxy = nx * ny;
  double acc[6] = {0, 0, 0, 0, 0, 0};  // d mx, d my, d sx, d sy, d angle, d opacity
  for (int64_t k = threadIdx.x; k < ni * nj; k += blockDim.x) {
    const int64_t i = i0 + k / nj, j = j0 + k % nj;
    const T dx = x0 + ((T)i + (T)0.5) * res - mx, dy = y0 + ((T)j + (T)0.5) * res - my;
    const T u = (c * dx + s * dy) * isx, v = (c * dy - s * dx) * isy;
    const T d2 = u * u + v * v;
    if (d2 > (T)kCut2) continue;
    const T e = ex((T)-0.5 * d2);
    T dot = 0;
    for (int64_t ch = 0; ch < C; ++ch) dot += grad_out[ch * nxy + i * ny + j] * feats[g * C + ch];
    acc[5] += (double)(e * dot);
    const double dd2 = -0.5 * (double)alpha * (double)e * (double)dot;  // dL / d(d2)
    acc[0] += dd2 * (-2.0 * u * c * isx + 2.0 * v * s * isy);
    acc[1] += dd2 * (-2.0 * u * s * isx - 2.0 * v * c * isy);
    acc[2] += dd2 * (-2.0 * u * u * isx);
    acc[3] += dd2 * (-2.0 * v * v * isy);
    acc[4] += dd2 * (2.0 * u * v * (sy * isx - sx * isy));
  }
  block_sum<6>(red, acc);
  if (threadIdx.x == 0) {
    g_means[g * 2 + 0] = (T)red[0][0];
    g_means[g * 2 + 1] = (T)red[1][0];
    g_scales[g * 2 + 0] = (T)red[2][0];
    g_scales[g * 2 + 1] = (T)red[3][0];
    g_rots[g] = (T)red[4][0];
    g_opac[g] = (T)red[5][0];
  }
  for (int64_t ch = threadIdx.x; ch < C; ch += blockDim.x) {  // d features: one channel per thread
    T sum = 0;
    for (int64_t k = 0; k < ni * nj; ++k) {
      const int64_t i = i0 + k / nj, j = j0 + k % nj;
      const T dx = x0 + ((T)i + (T)0.5) * res - mx, dy = y0 + ((T)j + (T)0.5) * res - my;
      const T u = (c * dx + s * dy) * isx, v = (c * dy - s * dx) * isy;
      const T d2 = u * u + v * v;
      if (d2 <= (T)kCut2) sum += alpha * ex((T)-0.5 * d2) * grad_out[ch * nxy + i * ny + j];
    }
    g_feats[g * C + ch] = sum;
  }
}

// ------------------------------------------------------------------------------------------------- 3-D
struct Grid3 {
  double o[3], v[3];
  int64_t n[3];
};

template <typename T>
__device__ inline T d2_3d(const T* p, T dx, T dy, T dz, T* u) {
  T d2 = 0;
  for (int b = 0; b < 3; ++b) {
    u[b] = (p[3 + b] * dx + p[6 + b] * dy + p[9 + b] * dz) * p[12 + b];
    d2 += u[b] * u[b];
  }
  return d2;
}

template <typename T>
__global__ void splat3d_forward(const T* __restrict__ prm, const T* __restrict__ feats,
                                const int64_t* __restrict__ ptr, const int64_t* __restrict__ lst, int64_t C,
                                Grid3 grid, int tx, int ty, int tz, T* __restrict__ out) {
  __shared__ T sp[kBatch][16];
  __shared__ int64_t sg[kBatch];
  const int64_t X = grid.n[0], Y = grid.n[1], Z = grid.n[2];
  const int64_t nty = (Y + ty - 1) / ty, ntz = (Z + tz - 1) / tz;
  const int64_t t = blockIdx.x;
  const int64_t i = (t / (nty * ntz)) * tx + threadIdx.x / (ty * tz);
  const int64_t j = ((t / ntz) % nty) * ty + (threadIdx.x / tz) % ty;
  const int64_t k = (t % ntz) * tz + threadIdx.x % tz;
  const bool inside = i < X && j < Y && k < Z;
  const T cx = (T)(grid.o[0] + (i + 0.5) * grid.v[0]), cy = (T)(grid.o[1] + (j + 0.5) * grid.v[1]),
          cz = (T)(grid.o[2] + (k + 0.5) * grid.v[2]);
  const int64_t e0 = ptr[t], e1 = ptr[t + 1];
  for (int64_t c0 = 0; c0 < C; c0 += kCh) {
    T acc[kCh];
    for (int q = 0; q < kCh; ++q) acc[q] = 0;
    for (int64_t b0 = e0; b0 < e1; b0 += kBatch) {
      const int nb = (int)((e1 - b0) < kBatch ? (e1 - b0) : kBatch);
      __syncthreads();
      for (int m = threadIdx.x; m < nb; m += blockDim.x) {
        const int64_t g = lst[b0 + m];
        sg[m] = g;
        for (int q = 0; q < 16; ++q) sp[m][q] = prm[g * 16 + q];
      }
      __syncthreads();
      if (!inside) continue;
      for (int m = 0; m < nb; ++m) {
        T u[3];
        const T d2 = d2_3d(sp[m], cx - sp[m][0], cy - sp[m][1], cz - sp[m][2], u);
        if (d2 <= (T)kCut2) {
          const T w = sp[m][15] * ex((T)-0.5 * d2);
          const T* f = feats + sg[m] * C + c0;
          for (int q = 0; q < kCh; ++q)
            if (c0 + q < C) acc[q] += w * f[q];
        }
      }
    }
    if (inside)
      for (int q = 0; q < kCh; ++q)
        if (c0 + q < C) out[(((c0 + q) * X + i) * Y + j) * Z + k] = acc[q];
  }
}

template <typename T>
__global__ void splat3d_backward(const T* __restrict__ grad_out, const T* __restrict__ prm,
                                 const T* __restrict__ feats, int64_t C, Grid3 grid, T* __restrict__ g_means,
                                 T* __restrict__ g_scales, T* __restrict__ g_rotm, T* __restrict__ g_opac,
                                 T* __restrict__ g_feats) {
  __shared__ double red[16][kBwdThreads];
  const int64_t g = blockIdx.x;
  const T* p = prm + g * 16;
  const T alpha = p[15];
  int64_t lo[3], hi[3], n[3];
  for (int a = 0; a < 3; ++a) {
    double var = 0;
    for (int b = 0; b < 3; ++b) {
      const double rs = (double)p[3 + 3 * a + b] / (double)p[12 + b];
      var += rs * rs;
    }
    axis_range(p[a], 3.0 * sqrt(var), grid.o[a], grid.v[a], grid.n[a], &lo[a], &hi[a]);
    n[a] = hi[a] >= lo[a] ? hi[a] - lo[a] + 1 : 0;
  }
  const int64_t X = grid.n[0], Y = grid.n[1], Z = grid.n[2], nvox = X * Y * Z;
  const int64_t total = n[0] * n[1] * n[2];
  double acc[16];  // d means (3), d scales (3), d R (9, row-major), d opacity
  for (int q = 0; q < 16; ++q) acc[q] = 0;
  for (int64_t m = threadIdx.x; m < total; m += blockDim.x) {
    const int64_t i = lo[0] + m / (n[1] * n[2]), j = lo[1] + (m / n[2]) % n[1], k = lo[2] + m % n[2];
    const T d[3] = {(T)(grid.o[0] + (i + 0.5) * grid.v[0]) - p[0], (T)(grid.o[1] + (j + 0.5) * grid.v[1]) - p[1],
                    (T)(grid.o[2] + (k + 0.5) * grid.v[2]) - p[2]};
    T u[3];
    const T d2 = d2_3d(p, d[0], d[1], d[2], u);
    if (d2 > (T)kCut2) continue;
    const T e = ex((T)-0.5 * d2);
    const int64_t cell = (i * Y + j) * Z + k;
    T dot = 0;
    for (int64_t ch = 0; ch < C; ++ch) dot += grad_out[ch * nvox + cell] * feats[g * C + ch];
    acc[15] += (double)(e * dot);
    const double dd2 = -0.5 * (double)alpha * (double)e * (double)dot;
    for (int b = 0; b < 3; ++b) {
      const double h = 2.0 * dd2 * (double)u[b] * (double)p[12 + b];  // dL / d(sum_a R[a][b] d_a)
      acc[3 + b] -= h * (double)u[b];
      for (int a = 0; a < 3; ++a) {
        acc[6 + 3 * a + b] += h * (double)d[a];
        acc[a] -= h * (double)p[3 + 3 * a + b];
      }
    }
  }
  block_sum<16>(red, acc);
  if (threadIdx.x == 0) {
    for (int a = 0; a < 3; ++a) {
      g_means[g * 3 + a] = (T)red[a][0];
      g_scales[g * 3 + a] = (T)red[3 + a][0];
    }
    for (int q = 0; q < 9; ++q) g_rotm[g * 9 + q] = (T)red[6 + q][0];
    g_opac[g] = (T)red[15][0];
  }
  for (int64_t ch = threadIdx.x; ch < C; ch += blockDim.x) {
    T sum = 0;
    for (int64_t m = 0; m < total; ++m) {
      const int64_t i = lo[0] + m / (n[1] * n[2]), j = lo[1] + (m / n[2]) % n[1], k = lo[2] + m % n[2];
      T u[3];
      const T d2 = d2_3d(p, (T)(grid.o[0] + (i + 0.5) * grid.v[0]) - p[0],
                         (T)(grid.o[1] + (j + 0.5) * grid.v[1]) - p[1], (T)(grid.o[2] + (k + 0.5) * grid.v[2]) - p[2],
                         u);
      if (d2 <= (T)kCut2) sum += alpha * ex((T)-0.5 * d2) * grad_out[ch * nvox + (i * Y + j) * Z + k];
    }
    g_feats[g * C + ch] = sum;
  }
}

}  // namespace

#define PERCEPTION_SPLAT_LAUNCHERS(T, SUFFIX)                                                                     \
  extern "C" cudaError_t perception_splat2d_forward_##SUFFIX(const T* prm, const T* feats, const int64_t* ptr,   \
                                                             const int64_t* lst, int64_t C, double x0, double y0, \
                                                             double res, int64_t nx, int64_t ny, int tile, T* out, \
                                                             cudaStream_t stream) {                               \
    const int64_t n_tiles = ((nx + tile - 1) / tile) * ((ny + tile - 1) / tile);                                  \
    if (n_tiles > 0 && C > 0)                                                                                     \
      splat2d_forward<T><<<(unsigned)n_tiles, tile * tile, 0, stream>>>(prm, feats, ptr, lst, C, (T)x0, (T)y0,    \
                                                                        (T)res, nx, ny, tile, out);               \
    return cudaGetLastError();                                                                                    \
  }                                                                                                               \
  extern "C" cudaError_t perception_splat2d_backward_##SUFFIX(                                                    \
      const T* grad_out, const T* prm, const T* feats, int64_t G, int64_t C, double x0, double y0, double res,    \
      int64_t nx, int64_t ny, T* g_means, T* g_scales, T* g_rots, T* g_opac, T* g_feats, cudaStream_t stream) {   \
    if (G > 0)                                                                                                    \
      splat2d_backward<T><<<(unsigned)G, kBwdThreads, 0, stream>>>(grad_out, prm, feats, C, (T)x0, (T)y0, (T)res, \
                                                                   nx, ny, g_means, g_scales, g_rots, g_opac,     \
                                                                   g_feats);                                      \
    return cudaGetLastError();                                                                                    \
  }                                                                                                               \
  extern "C" cudaError_t perception_splat3d_forward_##SUFFIX(                                                     \
      const T* prm, const T* feats, const int64_t* ptr, const int64_t* lst, int64_t C, const double* origin,       \
      const double* voxel, const int64_t* shape, const int* tile, T* out, cudaStream_t stream) {                  \
    Grid3 grid;                                                                                                   \
    int64_t n_tiles = 1;                                                                                          \
    for (int a = 0; a < 3; ++a) {                                                                                 \
      grid.o[a] = origin[a];                                                                                      \
      grid.v[a] = voxel[a];                                                                                       \
      grid.n[a] = shape[a];                                                                                       \
      n_tiles *= (shape[a] + tile[a] - 1) / tile[a];                                                              \
    }                                                                                                             \
    if (n_tiles > 0 && C > 0)                                                                                     \
      splat3d_forward<T><<<(unsigned)n_tiles, tile[0] * tile[1] * tile[2], 0, stream>>>(                          \
          prm, feats, ptr, lst, C, grid, tile[0], tile[1], tile[2], out);                                         \
    return cudaGetLastError();                                                                                    \
  }                                                                                                               \
  extern "C" cudaError_t perception_splat3d_backward_##SUFFIX(                                                    \
      const T* grad_out, const T* prm, const T* feats, int64_t G, int64_t C, const double* origin,                \
      const double* voxel, const int64_t* shape, T* g_means, T* g_scales, T* g_rotm, T* g_opac, T* g_feats,       \
      cudaStream_t stream) {                                                                                      \
    Grid3 grid;                                                                                                   \
    for (int a = 0; a < 3; ++a) {                                                                                 \
      grid.o[a] = origin[a];                                                                                      \
      grid.v[a] = voxel[a];                                                                                       \
      grid.n[a] = shape[a];                                                                                       \
    }                                                                                                             \
    if (G > 0)                                                                                                    \
      splat3d_backward<T><<<(unsigned)G, kBwdThreads, 0, stream>>>(grad_out, prm, feats, C, grid, g_means,        \
                                                                   g_scales, g_rotm, g_opac, g_feats);            \
    return cudaGetLastError();                                                                                    \
  }

PERCEPTION_SPLAT_LAUNCHERS(float, f32)
PERCEPTION_SPLAT_LAUNCHERS(double, f64)
