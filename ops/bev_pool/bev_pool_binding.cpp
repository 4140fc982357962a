// torch binding of ops/bev_pool/bev_pool.cu (built on first use by perception/ops/_native.py).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <vector>

#define PERCEPTION_DECLARE(T, SUFFIX)                                                                         \
  extern "C" cudaError_t perception_bev_pool_forward_##SUFFIX(                                                \
      const T*, const T*, const int64_t*, const int64_t*, const int64_t*, const int64_t*, const int64_t*,     \
      int64_t, int64_t, int64_t, T*, cudaStream_t);                                                           \
  extern "C" cudaError_t perception_bev_pool_backward_##SUFFIX(const T*, const T*, const T*, const int64_t*,  \
                                                               int64_t, int64_t, int64_t, int64_t, int64_t,   \
                                                               int64_t, T*, T*, cudaStream_t);
PERCEPTION_DECLARE(float, f32)
PERCEPTION_DECLARE(double, f64)
#undef PERCEPTION_DECLARE

namespace {

void check(const torch::Tensor& t, const char* name, c10::optional<at::ScalarType> dtype) {
  TORCH_CHECK(t.is_cuda(), "bev_pool: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), "bev_pool: ", name, " must be contiguous");
  if (dtype) TORCH_CHECK(t.scalar_type() == *dtype, "bev_pool: ", name, " has dtype ", t.scalar_type());
}

void ok(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, "bev_pool CUDA kernel failed: ", cudaGetErrorString(err)); }

}  // namespace

torch::Tensor forward(torch::Tensor feats, torch::Tensor depth, torch::Tensor point_idx, torch::Tensor feat_idx,
                      torch::Tensor cell_ids, torch::Tensor starts, torch::Tensor lengths, int64_t batch, int64_t nx,
                      int64_t ny) {
  const auto st = feats.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "bev_pool: feats must be float32 or float64");
  check(feats, "feats", st);
  check(depth, "depth", st);
  for (auto* t : {&point_idx, &feat_idx, &cell_ids, &starts, &lengths}) check(*t, "plan tensor", at::kLong);
  const c10::cuda::CUDAGuard guard(feats.device());
  const int64_t C = feats.size(1);
  auto out = torch::zeros({batch, C, nx, ny}, feats.options());
  const int64_t n_int = cell_ids.numel();
  if (n_int == 0 || C == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (st == at::kFloat)
    ok(perception_bev_pool_forward_f32(feats.data_ptr<float>(), depth.data_ptr<float>(), point_idx.data_ptr<int64_t>(),
                                       feat_idx.data_ptr<int64_t>(), cell_ids.data_ptr<int64_t>(),
                                       starts.data_ptr<int64_t>(), lengths.data_ptr<int64_t>(), n_int, C, nx * ny,
                                       out.data_ptr<float>(), stream));
  else
    ok(perception_bev_pool_forward_f64(feats.data_ptr<double>(), depth.data_ptr<double>(),
                                       point_idx.data_ptr<int64_t>(), feat_idx.data_ptr<int64_t>(),
                                       cell_ids.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
                                       lengths.data_ptr<int64_t>(), n_int, C, nx * ny, out.data_ptr<double>(), stream));
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor grad_out, torch::Tensor feats, torch::Tensor depth,
                                    torch::Tensor point_cell, int64_t d_bins, int64_t hw) {
  const auto st = feats.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "bev_pool: feats must be float32 or float64");
  check(grad_out, "grad_out", st);
  check(feats, "feats", st);
  check(depth, "depth", st);
  check(point_cell, "point_cell", at::kLong);
  const c10::cuda::CUDAGuard guard(feats.device());
  auto grad_feats = torch::empty_like(feats);
  auto grad_depth = torch::empty_like(depth);
  const int64_t P = depth.numel(), M = feats.size(0), C = feats.size(1);
  const int64_t nxy = grad_out.dim() == 4 ? grad_out.size(2) * grad_out.size(3) : 0;
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (st == at::kFloat)
    ok(perception_bev_pool_backward_f32(grad_out.data_ptr<float>(), feats.data_ptr<float>(), depth.data_ptr<float>(),
                                        point_cell.data_ptr<int64_t>(), P, M, C, nxy, d_bins, hw,
                                        grad_feats.data_ptr<float>(), grad_depth.data_ptr<float>(), stream));
  else
    ok(perception_bev_pool_backward_f64(grad_out.data_ptr<double>(), feats.data_ptr<double>(),
                                        depth.data_ptr<double>(), point_cell.data_ptr<int64_t>(), P, M, C, nxy, d_bins,
                                        hw, grad_feats.data_ptr<double>(), grad_depth.data_ptr<double>(), stream));
  return {grad_feats, grad_depth};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "bev_pool forward (CUDA)");
  m.def("backward", &backward, "bev_pool backward (CUDA)");
}
