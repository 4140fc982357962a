// Hard and dynamic voxelization kernels (plain CUDA C++, no torch headers; see voxelize_binding.cpp).
//
// Semantics (perception/ops/voxelize.py): a point's cell is floor((p - min) / size) per axis in the
// points' dtype with IEEE-rounded subtraction and division (__fsub_rn/__fdiv_rn and the double
// versions, so --use_fast_math cannot change a boundary decision); x, y or z non-finite -> "non-finite",
// a cell outside [0, grid) -> "out of range". Hard voxelization numbers voxels by the first point that
// falls in them and keeps each voxel's first P points in input order, deterministically:
//
//   1. vx_keys:      cell key per point (bit-packed z << sz | y << sy | x; -1 / -2 for dropped points)
//   2. vx_insert:    open-addressing hash table (atomicCAS on the key), atomicMin of the point index
//                    gives each voxel its first point
//   3. vx_flags:     flag the first points; the binding's prefix sum numbers them in input order
//   4. vx_slot_vid:  voxel number per table slot
//   5. vx_count:     voxel per point, points per voxel (atomicAdd; counts are order-free)
//   6. vx_bucket:    points grouped per voxel (CSR, unordered inside a voxel)
//   7. vx_select:    one thread per voxel picks its P smallest point indices in increasing order,
//                    copies them, zero-pads, decodes the coords
//
// Every launcher returns nullptr on success or the CUDA error string.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr unsigned long long kEmpty = 0xFFFFFFFFFFFFFFFFull;
constexpr int kThreads = 256;

__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ bool finite(float a) { return isfinite(a); }
__device__ __forceinline__ bool finite(double a) { return isfinite(a); }

struct Grid {
  double lo[3], vs[3];
  int64_t n[3];  // nx, ny, nz
  int sy, sz;    // key shifts
};

// cell of point p (x, y, z first): returns the packed key, -1 (non-finite) or -2 (out of range)
template <typename T>
__device__ __forceinline__ int64_t cell_key(const T* p, const Grid& g, int64_t* cell) {
  const T x = p[0], y = p[1], z = p[2];
  if (!(finite(x) && finite(y) && finite(z))) return -1;
  const T f[3] = {floor(div_rn(sub_rn(x, (T)g.lo[0]), (T)g.vs[0])),
                  floor(div_rn(sub_rn(y, (T)g.lo[1]), (T)g.vs[1])),
                  floor(div_rn(sub_rn(z, (T)g.lo[2]), (T)g.vs[2]))};
  for (int a = 0; a < 3; ++a) {
    if (!(f[a] >= (T)0 && f[a] < (T)g.n[a])) return -2;
    cell[a] = (int64_t)f[a];
  }
  return (cell[2] << g.sz) | (cell[1] << g.sy) | cell[0];
}

template <typename T>
__global__ void keys_kernel(const T* __restrict__ pts, int64_t n, int64_t C, Grid g, int64_t* __restrict__ keys,
                            unsigned long long* __restrict__ counters) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t cell[3];
  const int64_t k = cell_key(pts + i * C, g, cell);
  keys[i] = k;
  if (k == -1) atomicAdd(counters, 1ull);
  if (k == -2) atomicAdd(counters + 1, 1ull);
}

template <typename T>
__global__ void dynamic_kernel(const T* __restrict__ pts, int64_t n, int64_t C, Grid g, int* __restrict__ coors,
                               unsigned long long* __restrict__ counters) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t cell[3];
  const int64_t k = cell_key(pts + i * C, g, cell);
  if (k >= 0) {
    coors[i * 3 + 0] = (int)cell[2];
    coors[i * 3 + 1] = (int)cell[1];
    coors[i * 3 + 2] = (int)cell[0];
  } else {
    coors[i * 3 + 0] = coors[i * 3 + 1] = coors[i * 3 + 2] = -1;
    atomicAdd(counters + (k == -1 ? 0 : 1), 1ull);
  }
}

__device__ __forceinline__ int64_t hash_slot(int64_t k, int bits) {
  return (int64_t)(((unsigned long long)k * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

__global__ void insert_kernel(const int64_t* __restrict__ keys, int64_t n, unsigned long long* __restrict__ tkeys,
                              int* __restrict__ tfirst, int bits, int* __restrict__ slot_of) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t k = keys[i];
  if (k < 0) return;
  const int64_t mask = (1ll << bits) - 1;
  int64_t s = hash_slot(k, bits);
  while (true) {
    const unsigned long long prev = atomicCAS(tkeys + s, kEmpty, (unsigned long long)k);
    if (prev == kEmpty || prev == (unsigned long long)k) break;
    s = (s + 1) & mask;  // the table has >= 2x the points: a free slot always exists
  }
  slot_of[i] = (int)s;
  atomicMin(tfirst + s, (int)i);
}

__global__ void flags_kernel(const int64_t* __restrict__ keys, const int* __restrict__ slot_of,
                             const int* __restrict__ tfirst, int64_t n, int* __restrict__ flags) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  flags[i] = (keys[i] >= 0 && tfirst[slot_of[i]] == (int)i) ? 1 : 0;
}

__global__ void slot_vid_kernel(const int* __restrict__ flags, const int* __restrict__ slot_of,
                                const int* __restrict__ excl, int64_t n, int* __restrict__ vid_of_slot) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n || !flags[i]) return;
  vid_of_slot[slot_of[i]] = excl[i];
}

__global__ void count_kernel(const int64_t* __restrict__ keys, const int* __restrict__ slot_of,
                             const int* __restrict__ vid_of_slot, int64_t n, int64_t M, int* __restrict__ point_vid,
                             int* __restrict__ count) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  int v = -1;
  if (keys[i] >= 0) {
    v = vid_of_slot[slot_of[i]];
    if (v < M) atomicAdd(count + v, 1); else v = -1;  // voxels past max_voxels are dropped whole
  }
  point_vid[i] = v;
}

__global__ void bucket_kernel(const int* __restrict__ point_vid, int64_t n, const int64_t* __restrict__ offsets,
                              int* __restrict__ cursor, int* __restrict__ list) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int v = point_vid[i];
  if (v < 0) return;
  const int pos = atomicAdd(cursor + v, 1);
  list[offsets[v] + pos] = (int)i;
}

template <typename T>
__global__ void select_kernel(const T* __restrict__ pts, int64_t C, const int* __restrict__ list,
                              const int64_t* __restrict__ offsets, const int* __restrict__ count,
                              const int64_t* __restrict__ keys, int64_t M, int P, int sy, int sz,
                              T* __restrict__ voxels, int* __restrict__ coords, int* __restrict__ num) {
  const int64_t v = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (v >= M) return;
  const int* l = list + offsets[v];
  const int k = count[v];
  const int m = k < P ? k : P;
  T* out = voxels + v * (int64_t)P * C;
  int prev = -1;
  for (int r = 0; r < m; ++r) {  // r-th smallest point index: O(P k), k is small for real voxels
    int best = 0x7FFFFFFF;
    for (int j = 0; j < k; ++j) {
      const int idx = l[j];
      if (idx > prev && idx < best) best = idx;
    }
    const T* src = pts + (int64_t)best * C;
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = src[c];
    if (r == 0) {
      const int64_t key = keys[best];
      coords[v * 3 + 0] = (int)(key >> sz);
      coords[v * 3 + 1] = (int)((key >> sy) & ((1ll << (sz - sy)) - 1));
      coords[v * 3 + 2] = (int)(key & ((1ll << sy) - 1));
    }
    prev = best;
  }
  for (int64_t q = (int64_t)m * C; q < (int64_t)P * C; ++q) out[q] = (T)0;
  num[v] = m;
}

inline unsigned blocks(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

inline const char* status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

inline Grid make_grid(const double* lo, const double* vs, const int64_t* grid, int sy, int sz) {
  Grid g;
  for (int a = 0; a < 3; ++a) {
    g.lo[a] = lo[a];
    g.vs[a] = vs[a];
    g.n[a] = grid[a];
  }
  g.sy = sy;
  g.sz = sz;
  return g;
}

}  // namespace

extern "C" {

// keys [n] int64, counters [2] uint64 (non-finite, out of range; zeroed by the caller)
const char* vx_keys_launch(const void* pts, int is_double, int64_t n, int64_t C, const double* lo, const double* vs,
                           const int64_t* grid, int sy, int sz, int64_t* keys, unsigned long long* counters,
                           void* stream) {
  if (n == 0) return nullptr;
  const Grid g = make_grid(lo, vs, grid, sy, sz);
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    keys_kernel<double><<<blocks(n), kThreads, 0, s>>>((const double*)pts, n, C, g, keys, counters);
  else
    keys_kernel<float><<<blocks(n), kThreads, 0, s>>>((const float*)pts, n, C, g, keys, counters);
  return status();
}

// coors [n, 3] int32 (z, y, x) or -1 rows; counters as above
const char* vx_dynamic_launch(const void* pts, int is_double, int64_t n, int64_t C, const double* lo,
                              const double* vs, const int64_t* grid, int* coors, unsigned long long* counters,
                              void* stream) {
  if (n == 0) return nullptr;
  const Grid g = make_grid(lo, vs, grid, 0, 0);
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    dynamic_kernel<double><<<blocks(n), kThreads, 0, s>>>((const double*)pts, n, C, g, coors, counters);
  else
    dynamic_kernel<float><<<blocks(n), kThreads, 0, s>>>((const float*)pts, n, C, g, coors, counters);
  return status();
}

// tkeys [2^bits] filled with all-ones bytes, tfirst [2^bits] filled with INT_MAX by the caller
const char* vx_insert_launch(const int64_t* keys, int64_t n, unsigned long long* tkeys, int* tfirst, int bits,
                             int* slot_of, void* stream) {
  if (n == 0) return nullptr;
  insert_kernel<<<blocks(n), kThreads, 0, (cudaStream_t)stream>>>(keys, n, tkeys, tfirst, bits, slot_of);
  return status();
}

const char* vx_flags_launch(const int64_t* keys, const int* slot_of, const int* tfirst, int64_t n, int* flags,
                            void* stream) {
  if (n == 0) return nullptr;
  flags_kernel<<<blocks(n), kThreads, 0, (cudaStream_t)stream>>>(keys, slot_of, tfirst, n, flags);
  return status();
}

const char* vx_slot_vid_launch(const int* flags, const int* slot_of, const int* excl, int64_t n, int* vid_of_slot,
                               void* stream) {
  if (n == 0) return nullptr;
  slot_vid_kernel<<<blocks(n), kThreads, 0, (cudaStream_t)stream>>>(flags, slot_of, excl, n, vid_of_slot);
  return status();
}

// count [M] zeroed by the caller
const char* vx_count_launch(const int64_t* keys, const int* slot_of, const int* vid_of_slot, int64_t n, int64_t M,
                            int* point_vid, int* count, void* stream) {
  if (n == 0) return nullptr;
  count_kernel<<<blocks(n), kThreads, 0, (cudaStream_t)stream>>>(keys, slot_of, vid_of_slot, n, M, point_vid, count);
  return status();
}

// cursor [M] zeroed by the caller; offsets [M] exclusive prefix sum of count
const char* vx_bucket_launch(const int* point_vid, int64_t n, const int64_t* offsets, int* cursor, int* list,
                             void* stream) {
  if (n == 0) return nullptr;
  bucket_kernel<<<blocks(n), kThreads, 0, (cudaStream_t)stream>>>(point_vid, n, offsets, cursor, list);
  return status();
}

const char* vx_select_launch(const void* pts, int is_double, int64_t C, const int* list, const int64_t* offsets,
                             const int* count, const int64_t* keys, int64_t M, int P, int sy, int sz, void* voxels,
                             int* coords, int* num, void* stream) {
  if (M == 0) return nullptr;
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    select_kernel<double><<<blocks(M), kThreads, 0, s>>>((const double*)pts, C, list, offsets, count, keys, M, P, sy,
                                                         sz, (double*)voxels, coords, num);
  else
    select_kernel<float><<<blocks(M), kThreads, 0, s>>>((const float*)pts, C, list, offsets, count, keys, M, P, sy, sz,
                                                        (float*)voxels, coords, num);
  return status();
}

}  // extern "C"
