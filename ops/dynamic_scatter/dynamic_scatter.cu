// Dynamic scatter kernels (plain CUDA C++, no torch headers; see dynamic_scatter_binding.cpp).
//
// The binding computes the linear keys' unique set (sorted, so voxels come in (z, y, x) order) with
// torch; these kernels do the per-point work:
//   ds_keys:        key = (z * Y + y) * X + x, -1 for rows with a negative coordinate
//   ds_sum:         out[v] += feats[i] (atomicAdd; float sums are order-dependent in the last bits)
//   ds_max:         out[v] = max(out[v], feats[i]) (CAS loop; NaN wins and stays, as on the CPU)
//   ds_divide:      out[v] /= count[v] (mean)
//   ds_argmax:      arg[v, c] = smallest point index whose feature equals the max (ties -> first point)
//   ds_grad_sum:    grad_feats[i] = grad[v] (/ count[v] for mean), 0 for ignored points
//   ds_grad_max:    grad_feats[i, c] = grad[v, c] where i == arg[v, c], else 0
// Every launcher returns nullptr on success or the CUDA error string.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void atomic_max(float* addr, float val) {
  int* a = (int*)addr;
  int old = *a;
  while (true) {
    const float cur = __int_as_float(old);
    if (cur != cur) return;                  // NaN stays
    if (!(val > cur || val != val)) return;  // not larger and not NaN
    const int prev = atomicCAS(a, old, __float_as_int(val));
    if (prev == old) return;
    old = prev;
  }
}

__device__ __forceinline__ void atomic_max(double* addr, double val) {
  unsigned long long* a = (unsigned long long*)addr;
  unsigned long long old = *a;
  while (true) {
    const double cur = __longlong_as_double((long long)old);
    if (cur != cur) return;
    if (!(val > cur || val != val)) return;
    const unsigned long long prev = atomicCAS(a, old, (unsigned long long)__double_as_longlong(val));
    if (prev == old) return;
    old = prev;
  }
}

__global__ void keys_kernel(const int* __restrict__ coors, int64_t n, int64_t Y, int64_t X,
                            int64_t* __restrict__ keys) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int z = coors[i * 3], y = coors[i * 3 + 1], x = coors[i * 3 + 2];
  keys[i] = (z >= 0 && y >= 0 && x >= 0) ? ((int64_t)z * Y + y) * X + x : -1;
}

template <typename T, bool kMax>
__global__ void reduce_kernel(const T* __restrict__ feats, const int64_t* __restrict__ p2v, int64_t n, int64_t C,
                              T* __restrict__ out) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // one element (point, channel)
  if (e >= n * C) return;
  const int64_t i = e / C, c = e - i * C;
  const int64_t v = p2v[i];
  if (v < 0) return;
  if (kMax)
    atomic_max(out + v * C + c, feats[e]);
  else
    atomicAdd(out + v * C + c, feats[e]);
}

template <typename T>
__global__ void divide_kernel(T* __restrict__ out, const int* __restrict__ count, int64_t M, int64_t C) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= M * C) return;
  out[e] = out[e] / (T)count[e / C];
}

template <typename T>
__global__ void argmax_kernel(const T* __restrict__ feats, const T* __restrict__ out, const int64_t* __restrict__ p2v,
                              int64_t n, int64_t C, int* __restrict__ arg) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= n * C) return;
  const int64_t i = e / C, c = e - i * C;
  const int64_t v = p2v[i];
  if (v < 0) return;
  if (feats[e] == out[v * C + c]) atomicMin(arg + v * C + c, (int)i);
}

template <typename T>
__global__ void grad_sum_kernel(const T* __restrict__ grad, const int64_t* __restrict__ p2v,
                                const int* __restrict__ count, int64_t n, int64_t C, bool mean,
                                T* __restrict__ gfeats) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= n * C) return;
  const int64_t i = e / C, c = e - i * C;
  const int64_t v = p2v[i];
  T g = (T)0;
  if (v >= 0) {
    g = grad[v * C + c];
    if (mean) g = g / (T)count[v];
  }
  gfeats[e] = g;
}

template <typename T>
__global__ void grad_max_kernel(const T* __restrict__ grad, const int64_t* __restrict__ p2v,
                                const int* __restrict__ arg, int64_t n, int64_t C, T* __restrict__ gfeats) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= n * C) return;
  const int64_t i = e / C, c = e - i * C;
  const int64_t v = p2v[i];
  gfeats[e] = (v >= 0 && arg[v * C + c] == (int)i) ? grad[v * C + c] : (T)0;
}

inline unsigned blocks(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

inline const char* status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

extern "C" {

const char* ds_keys_launch(const int* coors, int64_t n, int64_t Y, int64_t X, int64_t* keys, void* stream) {
  if (n == 0) return nullptr;
  keys_kernel<<<blocks(n), kThreads, 0, (cudaStream_t)stream>>>(coors, n, Y, X, keys);
  return status();
}

// out [M, C]: zeros (sum / mean) or -inf (max), filled by the caller
const char* ds_reduce_launch(const void* feats, int is_double, const int64_t* p2v, int64_t n, int64_t C, int is_max,
                             void* out, void* stream) {
  if (n * C == 0) return nullptr;
  cudaStream_t s = (cudaStream_t)stream;
  const unsigned b = blocks(n * C);
  if (is_double) {
    if (is_max)
      reduce_kernel<double, true><<<b, kThreads, 0, s>>>((const double*)feats, p2v, n, C, (double*)out);
    else
      reduce_kernel<double, false><<<b, kThreads, 0, s>>>((const double*)feats, p2v, n, C, (double*)out);
  } else {
    if (is_max)
      reduce_kernel<float, true><<<b, kThreads, 0, s>>>((const float*)feats, p2v, n, C, (float*)out);
    else
      reduce_kernel<float, false><<<b, kThreads, 0, s>>>((const float*)feats, p2v, n, C, (float*)out);
  }
  return status();
}

const char* ds_divide_launch(void* out, int is_double, const int* count, int64_t M, int64_t C, void* stream) {
  if (M * C == 0) return nullptr;
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    divide_kernel<double><<<blocks(M * C), kThreads, 0, s>>>((double*)out, count, M, C);
  else
    divide_kernel<float><<<blocks(M * C), kThreads, 0, s>>>((float*)out, count, M, C);
  return status();
}

// arg [M, C] filled with INT_MAX by the caller
const char* ds_argmax_launch(const void* feats, const void* out, int is_double, const int64_t* p2v, int64_t n,
                             int64_t C, int* arg, void* stream) {
  if (n * C == 0) return nullptr;
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    argmax_kernel<double><<<blocks(n * C), kThreads, 0, s>>>((const double*)feats, (const double*)out, p2v, n, C, arg);
  else
    argmax_kernel<float><<<blocks(n * C), kThreads, 0, s>>>((const float*)feats, (const float*)out, p2v, n, C, arg);
  return status();
}

const char* ds_grad_sum_launch(const void* grad, int is_double, const int64_t* p2v, const int* count, int64_t n,
                               int64_t C, int mean, void* gfeats, void* stream) {
  if (n * C == 0) return nullptr;
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    grad_sum_kernel<double><<<blocks(n * C), kThreads, 0, s>>>((const double*)grad, p2v, count, n, C, mean != 0,
                                                               (double*)gfeats);
  else
    grad_sum_kernel<float><<<blocks(n * C), kThreads, 0, s>>>((const float*)grad, p2v, count, n, C, mean != 0,
                                                              (float*)gfeats);
  return status();
}

const char* ds_grad_max_launch(const void* grad, int is_double, const int64_t* p2v, const int* arg, int64_t n,
                               int64_t C, void* gfeats, void* stream) {
  if (n * C == 0) return nullptr;
  cudaStream_t s = (cudaStream_t)stream;
  if (is_double)
    grad_max_kernel<double><<<blocks(n * C), kThreads, 0, s>>>((const double*)grad, p2v, arg, n, C, (double*)gfeats);
  else
    grad_max_kernel<float><<<blocks(n * C), kThreads, 0, s>>>((const float*)grad, p2v, arg, n, C, (float*)gfeats);
  return status();
}

}  // extern "C"
