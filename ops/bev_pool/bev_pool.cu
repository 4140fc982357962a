// Camera-to-BEV pooling (LSS, Philion & Fidler ECCV 2020; BEVFusion's interval pooling, Liu et al. ICRA 2023).
// Plain CUDA C++ (no torch headers): compile-checked with `nvcc -c` by tools/check_cuda_sources.sh; the
// torch binding is bev_pool_binding.cpp. Layouts match perception/ops/bev_pool.py:
//   feats [M, C] (row of frustum point p: feat_idx for the forward, (p / (d_bins hw)) hw + p % hw for the
//   backward), depth [P], out / grad_out [B, C, nx*ny], cell id = b * nx*ny + i * ny + j.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

// One thread per (interval, channel): sum depth * feature over the interval's points (no atomics: every
// interval is one cell). The output is zeroed by the caller (cells with no interval stay 0).
template <typename T>
__global__ void pool_forward(const T* __restrict__ feats, const T* __restrict__ depth,
                             const int64_t* __restrict__ point_idx, const int64_t* __restrict__ feat_idx,
                             const int64_t* __restrict__ cell_ids, const int64_t* __restrict__ starts,
                             const int64_t* __restrict__ lengths, int64_t n_intervals, int64_t C, int64_t nxy,
                             T* __restrict__ out) {
  int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (idx >= n_intervals * C) return;
  int64_t it = idx / C, c = idx - (idx / C) * C;
  T acc = 0;
  const int64_t q0 = starts[it], q1 = starts[it] + lengths[it];
  for (int64_t q = q0; q < q1; ++q) acc += depth[point_idx[q]] * feats[feat_idx[q] * C + c];
  const int64_t cell = cell_ids[it];
  const int64_t b = cell / nxy, r = cell - b * nxy;
  out[(b * C + c) * nxy + r] = acc;
}

// grad depth[p] = <feats[m(p)], grad_out[cell(p)]>, 0 for dropped points. One thread per frustum point.
template <typename T>
__global__ void pool_grad_depth(const T* __restrict__ grad_out, const T* __restrict__ feats,
                                const int64_t* __restrict__ point_cell, int64_t P, int64_t C, int64_t nxy,
                                int64_t d_bins, int64_t hw, T* __restrict__ grad_depth) {
  int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (p >= P) return;
  const int64_t cell = point_cell[p];
  if (cell < 0) {
    grad_depth[p] = 0;
    return;
  }
  const int64_t m = (p / (d_bins * hw)) * hw + p % hw;
  const int64_t b = cell / nxy, r = cell - b * nxy;
  T s = 0;
  for (int64_t c = 0; c < C; ++c) s += feats[m * C + c] * grad_out[(b * C + c) * nxy + r];
  grad_depth[p] = s;
}

// grad feats[m, c] = sum over the d_bins points of row m of depth[p] * grad_out[cell(p), c]. One thread per
// (row, channel): each thread owns its output, so no atomics and a deterministic sum.
template <typename T>
__global__ void pool_grad_feats(const T* __restrict__ grad_out, const T* __restrict__ depth,
                                const int64_t* __restrict__ point_cell, int64_t M, int64_t C, int64_t nxy,
                                int64_t d_bins, int64_t hw, T* __restrict__ grad_feats) {
  int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (idx >= M * C) return;
  const int64_t m = idx / C, c = idx - (idx / C) * C;
  const int64_t base = (m / hw) * d_bins * hw + m % hw;
  T acc = 0;
  for (int64_t k = 0; k < d_bins; ++k) {
    const int64_t p = base + k * hw;
    const int64_t cell = point_cell[p];
    if (cell < 0) continue;
    const int64_t b = cell / nxy, r = cell - b * nxy;
    acc += depth[p] * grad_out[(b * C + c) * nxy + r];
  }
  grad_feats[idx] = acc;
}

}  // namespace

#define PERCEPTION_BEV_POOL_LAUNCHERS(T, SUFFIX)                                                               \
  extern "C" cudaError_t perception_bev_pool_forward_##SUFFIX(                                                 \
      const T* feats, const T* depth, const int64_t* point_idx, const int64_t* feat_idx,                       \
      const int64_t* cell_ids, const int64_t* starts, const int64_t* lengths, int64_t n_intervals, int64_t C,   \
      int64_t nxy, T* out, cudaStream_t stream) {                                                              \
    const int64_t n = n_intervals * C;                                                                         \
    if (n > 0)                                                                                                 \
      pool_forward<T><<<blocks_for(n), kThreads, 0, stream>>>(feats, depth, point_idx, feat_idx, cell_ids,     \
                                                              starts, lengths, n_intervals, C, nxy, out);      \
    return cudaGetLastError();                                                                                 \
  }                                                                                                            \
  extern "C" cudaError_t perception_bev_pool_backward_##SUFFIX(                                                \
      const T* grad_out, const T* feats, const T* depth, const int64_t* point_cell, int64_t P, int64_t M,      \
      int64_t C, int64_t nxy, int64_t d_bins, int64_t hw, T* grad_feats, T* grad_depth, cudaStream_t stream) { \
    if (P > 0)                                                                                                 \
      pool_grad_depth<T><<<blocks_for(P), kThreads, 0, stream>>>(grad_out, feats, point_cell, P, C, nxy,       \
                                                                 d_bins, hw, grad_depth);                      \
    if (M * C > 0)                                                                                             \
      pool_grad_feats<T><<<blocks_for(M * C), kThreads, 0, stream>>>(grad_out, depth, point_cell, M, C, nxy,   \
                                                                     d_bins, hw, grad_feats);                  \
    return cudaGetLastError();                                                                                 \
  }

PERCEPTION_BEV_POOL_LAUNCHERS(float, f32)
PERCEPTION_BEV_POOL_LAUNCHERS(double, f64)
