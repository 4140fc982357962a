// MSF voxel-sampler pooling (perception/ops/proposal_pool.py), CUDA kernels in plain CUDA C.
//
// He et al., "MSF: Motion-guided Sequential Fusion for Efficient 3D Object Detection from Point
// Cloud Sequences", CVPR 2023: points-of-interest of every (frame, proposal) pair, found through a
// voxel hash. Same algorithm and same arithmetic as the numba kernels:
//   1. ppp_bucket_kernel: each finite point -> its bucket g = t*(B+1) + b on a toroidal grid of
//      B = bxy*bxy*bz buckets (voxel coordinates modulo the grid), counts[g+1] += 1;
//   2. (binding) starts = cumsum(counts): bucket g holds sorted_idx[starts[g] : starts[g+1]];
//   3. ppp_scatter_kernel: counting-sort scatter of point indices into sorted_idx (order inside a
//      bucket is arbitrary here; it does not matter, the selection below orders by key);
//   4. ppp_query_kernel: one thread per (frame, proposal): visit the buckets of the voxels that
//      overlap the cylinder's bounding box (at most one lap of the torus per axis, so no bucket
//      twice), exact float64 inside test with explicitly rounded operations (no FMA contraction,
//      so the result matches the CPU bit for bit), keep the P smallest keys in a max-heap stored in
//      the output row, heap-sort them, and pad with -1.
// Key: the point index (first-P sampling), or (31-bit hash priority << 32) | index (seeded subset).
// No torch headers: tools/check_cuda_sources.sh compiles this file with nvcc -c alone.
#include <cuda_runtime.h>
#include <stdint.h>

typedef long long i64;
typedef unsigned long long u64;

#define PPP_M32 0xFFFFFFFFull
#define PPP_HMUL 0x45D9F3Bull
#define PPP_P31 0x7FFFFFFFll
#define PPP_VLIM 1099511627776.0  // 2^40: voxel coordinates clamped (monotone, so still exact)

__device__ __forceinline__ i64 ppp_mix32(i64 x) {
  u64 v = (u64)x & PPP_M32;
  v ^= v >> 16;
  v = (v * PPP_HMUL) & PPP_M32;
  v ^= v >> 16;
  v = (v * PPP_HMUL) & PPP_M32;
  v ^= v >> 16;
  return (i64)v;
}

__device__ __forceinline__ i64 ppp_vcoord(double x, double inv) {
  double v = floor(__dmul_rn(x, inv));
  v = v < -PPP_VLIM ? -PPP_VLIM : (v > PPP_VLIM ? PPP_VLIM : v);
  return (i64)v;
}

template <typename S>
__device__ __forceinline__ double ppp_load(const S* p) { return (double)(*p); }

__device__ __forceinline__ void ppp_swap(i64* h, i64 a, i64 b) {
  i64 t = h[a];
  h[a] = h[b];
  h[b] = t;
}

// Restore the max-heap property below j in h[0:n].
__device__ void ppp_sift_down(i64* h, i64 j, i64 n) {
  while (true) {
    i64 l = 2 * j + 1;
    if (l >= n) break;
    i64 m = l;
    if (l + 1 < n && h[l + 1] > h[l]) m = l + 1;
    if (h[m] > h[j]) {
      ppp_swap(h, m, j);
      j = m;
    } else {
      break;
    }
  }
}

// Keep the cap smallest keys in the max-heap h[0:*hn].
__device__ __forceinline__ void ppp_heap_offer(i64* h, i64* hn, i64 cap, i64 key) {
  if (*hn < cap) {
    i64 j = *hn;
    h[j] = key;
    *hn = j + 1;
    while (j > 0) {
      i64 p = (j - 1) >> 1;
      if (h[p] < h[j]) {
        ppp_swap(h, p, j);
        j = p;
      } else {
        break;
      }
    }
  } else if (key < h[0]) {
    h[0] = key;
    ppp_sift_down(h, 0, cap);
  }
}

// Ascending in place.
__device__ void ppp_heapsort(i64* h, i64 n) {
  for (i64 j = n / 2 - 1; j >= 0; --j) ppp_sift_down(h, j, n);
  for (i64 e = n - 1; e > 0; --e) {
    ppp_swap(h, 0, e);
    ppp_sift_down(h, 0, e);
  }
}

template <typename S>
__global__ void ppp_bucket_kernel(const S* __restrict__ pts, i64 n, i64 c, const i64* __restrict__ offsets,
                                  int T, double ivx, double ivy, double ivz, i64 bxy, i64 bz,
                                  i64* __restrict__ point_slot, i64* __restrict__ counts) {
  i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int lo = 0, hi = T;  // offsets[lo] <= i < offsets[hi]; empty frames have equal offsets
  while (hi - lo > 1) {
    int mid = (lo + hi) >> 1;
    if (offsets[mid] <= i) lo = mid; else hi = mid;
  }
  double x = ppp_load(pts + i * c), y = ppp_load(pts + i * c + 1), z = ppp_load(pts + i * c + 2);
  if (!(isfinite(x) && isfinite(y) && isfinite(z))) {
    point_slot[i] = -1;
    return;
  }
  i64 B = bxy * bxy * bz;
  i64 b = ((ppp_vcoord(z, ivz) & (bz - 1)) * bxy + (ppp_vcoord(y, ivy) & (bxy - 1))) * bxy +
          (ppp_vcoord(x, ivx) & (bxy - 1));
  i64 g = (i64)lo * (B + 1) + b;
  point_slot[i] = g;
  atomicAdd((u64*)(counts + g + 1), 1ull);
}

__global__ void ppp_scatter_kernel(i64 n, const i64* __restrict__ point_slot, i64* __restrict__ cursor,
                                   i64* __restrict__ sorted_idx) {
  i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  i64 g = point_slot[i];
  if (g < 0) return;
  i64 p = (i64)atomicAdd((u64*)(cursor + g), 1ull);
  sorted_idx[p] = i;
}

template <typename S>
__global__ void ppp_query_kernel(const S* __restrict__ pts, i64 c, const i64* __restrict__ offsets,
                                 const double* __restrict__ cyl, int T, int K, double ivx, double ivy,
                                 double ivz, i64 bxy, i64 bz, const i64* __restrict__ starts,
                                 const i64* __restrict__ sorted_idx, i64 cap, i64 seed,
                                 i64* __restrict__ out_idx, i64* __restrict__ out_cnt) {
  i64 q = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= (i64)T * K) return;
  int t = (int)(q / K);
  const double* cy_ = cyl + q * 6;
  double cx = cy_[0], cyv = cy_[1], r2 = cy_[2], zlo = cy_[3], zhi = cy_[4], rq = cy_[5];
  i64* heap = out_idx + q * cap;
  i64 hn = 0, cnt = 0;
  if (r2 >= 0.0 && offsets[t + 1] > offsets[t]) {
    i64 B = bxy * bxy * bz, mxy = bxy - 1, mz = bz - 1;
    i64 ix0 = ppp_vcoord(__dsub_rn(cx, rq), ivx);
    i64 nx = ppp_vcoord(__dadd_rn(cx, rq), ivx) - ix0 + 1;
    i64 iy0 = ppp_vcoord(__dsub_rn(cyv, rq), ivy);
    i64 ny = ppp_vcoord(__dadd_rn(cyv, rq), ivy) - iy0 + 1;
    i64 iz0 = ppp_vcoord(zlo, ivz);
    i64 nz = ppp_vcoord(zhi, ivz) - iz0 + 1;
    nx = nx < bxy ? nx : bxy;
    ny = ny < bxy ? ny : bxy;
    nz = nz < bz ? nz : bz;
    i64 sq = seed >= 0 ? ppp_mix32(ppp_mix32(seed) ^ q) : 0;
    i64 base = (i64)t * (B + 1);
    for (i64 a = 0; a < nz; ++a) {
      i64 rz = (iz0 + a) & mz;
      for (i64 b = 0; b < ny; ++b) {
        i64 ry = (iy0 + b) & mxy;
        for (i64 e = 0; e < nx; ++e) {
          i64 g = base + (rz * bxy + ry) * bxy + ((ix0 + e) & mxy);
          i64 j1 = starts[g + 1];
          for (i64 j = starts[g]; j < j1; ++j) {
            i64 i = sorted_idx[j];
            double pz = ppp_load(pts + i * c + 2);
            if (pz < zlo || pz > zhi) continue;
            double dx = __dsub_rn(ppp_load(pts + i * c), cx);
            double dy = __dsub_rn(ppp_load(pts + i * c + 1), cyv);
            double d2 = __dadd_rn(__dmul_rn(dx, dx), __dmul_rn(dy, dy));
            if (d2 <= r2) {
              ++cnt;
              i64 key = seed >= 0 ? (((ppp_mix32(sq ^ i) & PPP_P31) << 32) | i) : i;
              ppp_heap_offer(heap, &hn, cap, key);
            }
          }
        }
      }
    }
  }
  ppp_heapsort(heap, hn);
  if (seed >= 0) {
    for (i64 a = 0; a < hn; ++a) heap[a] &= (i64)PPP_M32;
    ppp_heapsort(heap, hn);
  }
  for (i64 a = hn; a < cap; ++a) heap[a] = -1;
  out_cnt[q] = cnt;
}

static inline unsigned ppp_blocks(i64 n, int threads) { return (unsigned)((n + threads - 1) / threads); }

extern "C" const char* ppp_bucket_launch(const void* pts, int is_double, i64 n, i64 c, const i64* offsets,
                                         int T, double ivx, double ivy, double ivz, i64 bxy, i64 bz,
                                         i64* point_slot, i64* counts, void* stream) {
  if (n <= 0) return 0;
  const int threads = 256;
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    ppp_bucket_kernel<double><<<ppp_blocks(n, threads), threads, 0, s>>>(
        (const double*)pts, n, c, offsets, T, ivx, ivy, ivz, bxy, bz, point_slot, counts);
  else
    ppp_bucket_kernel<float><<<ppp_blocks(n, threads), threads, 0, s>>>(
        (const float*)pts, n, c, offsets, T, ivx, ivy, ivz, bxy, bz, point_slot, counts);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? 0 : cudaGetErrorString(err);
}

extern "C" const char* ppp_scatter_launch(i64 n, const i64* point_slot, i64* cursor, i64* sorted_idx,
                                          void* stream) {
  if (n <= 0) return 0;
  const int threads = 256;
  ppp_scatter_kernel<<<ppp_blocks(n, threads), threads, 0, (cudaStream_t)stream>>>(n, point_slot, cursor,
                                                                                   sorted_idx);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? 0 : cudaGetErrorString(err);
}

extern "C" const char* ppp_query_launch(const void* pts, int is_double, i64 c, const i64* offsets,
                                        const double* cyl, int T, int K, double ivx, double ivy, double ivz,
                                        i64 bxy, i64 bz, const i64* starts, const i64* sorted_idx, i64 cap,
                                        i64 seed, i64* out_idx, i64* out_cnt, void* stream) {
  i64 nq = (i64)T * K;
  if (nq <= 0) return 0;
  const int threads = 64;  // few, long threads (one per proposal): spread them over the SMs
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    ppp_query_kernel<double><<<ppp_blocks(nq, threads), threads, 0, s>>>(
        (const double*)pts, c, offsets, cyl, T, K, ivx, ivy, ivz, bxy, bz, starts, sorted_idx, cap, seed,
        out_idx, out_cnt);
  else
    ppp_query_kernel<float><<<ppp_blocks(nq, threads), threads, 0, s>>>(
        (const float*)pts, c, offsets, cyl, T, K, ivx, ivy, ivz, bxy, bz, starts, sorted_idx, cap, seed,
        out_idx, out_cnt);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? 0 : cudaGetErrorString(err);
}
