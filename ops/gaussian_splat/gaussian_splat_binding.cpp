// torch binding of ops/gaussian_splat/gaussian_splat.cu (built on first use by perception/ops/_native.py).
// The tile lists (ptr, lst) come from perception/ops/gaussian_splat.py (_tile_lists_torch), on the device.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <vector>

#define PERCEPTION_DECLARE(T, SUFFIX)                                                                          \
  extern "C" cudaError_t perception_splat2d_forward_##SUFFIX(const T*, const T*, const int64_t*, const int64_t*, \
                                                             int64_t, double, double, double, int64_t, int64_t, \
                                                             int, T*, cudaStream_t);                            \
  extern "C" cudaError_t perception_splat2d_backward_##SUFFIX(const T*, const T*, const T*, int64_t, int64_t,   \
                                                              double, double, double, int64_t, int64_t, T*, T*, \
                                                              T*, T*, T*, cudaStream_t);                        \
  extern "C" cudaError_t perception_splat3d_forward_##SUFFIX(const T*, const T*, const int64_t*, const int64_t*, \
                                                             int64_t, const double*, const double*,             \
                                                             const int64_t*, const int*, T*, cudaStream_t);     \
  extern "C" cudaError_t perception_splat3d_backward_##SUFFIX(const T*, const T*, const T*, int64_t, int64_t,   \
                                                              const double*, const double*, const int64_t*, T*, \
                                                              T*, T*, T*, T*, cudaStream_t);
PERCEPTION_DECLARE(float, f32)
PERCEPTION_DECLARE(double, f64)
#undef PERCEPTION_DECLARE

namespace {

at::ScalarType check_all(std::initializer_list<const torch::Tensor*> ts) {
  const auto st = (*ts.begin())->scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "gaussian_splat: expected float32 or float64 tensors");
  for (const auto* t : ts) {
    TORCH_CHECK(t->is_cuda(), "gaussian_splat: expected CUDA tensors");
    TORCH_CHECK(t->scalar_type() == st, "gaussian_splat: all parameters must share one dtype");
  }
  return st;
}

void ok(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "gaussian_splat CUDA kernel failed: ", cudaGetErrorString(err));
}

// [G, 7]: mx, my, cos, sin, 1/sx, 1/sy, opacity
torch::Tensor params2d(const torch::Tensor& means, const torch::Tensor& scales, const torch::Tensor& rotations,
                       const torch::Tensor& opacities) {
  return torch::stack({means.select(1, 0), means.select(1, 1), rotations.cos(), rotations.sin(),
                       scales.select(1, 0).reciprocal(), scales.select(1, 1).reciprocal(), opacities},
                      1)
      .contiguous();
}

// [G, 16]: mean (3), R row-major (9), 1/scales (3), opacity
torch::Tensor params3d(const torch::Tensor& means, const torch::Tensor& scales, const torch::Tensor& rotmats,
                       const torch::Tensor& opacities) {
  return torch::cat({means, rotmats.reshape({means.size(0), 9}), scales.reciprocal(), opacities.unsqueeze(1)}, 1)
      .contiguous();
}

}  // namespace

torch::Tensor splat2d_forward(torch::Tensor means, torch::Tensor scales, torch::Tensor rotations,
                              torch::Tensor opacities, torch::Tensor features, torch::Tensor ptr, torch::Tensor lst,
                              double x_min, double y_min, double res, int64_t nx, int64_t ny, int64_t tile) {
  const auto st = check_all({&means, &scales, &rotations, &opacities, &features});
  const c10::cuda::CUDAGuard guard(means.device());
  features = features.contiguous();
  const int64_t C = features.size(1);
  auto out = torch::zeros({C, nx, ny}, features.options());
  if (C == 0 || nx == 0 || ny == 0) return out;
  auto prm = params2d(means, scales, rotations, opacities);
  ptr = ptr.contiguous();
  lst = lst.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (st == at::kFloat)
    ok(perception_splat2d_forward_f32(prm.data_ptr<float>(), features.data_ptr<float>(), ptr.data_ptr<int64_t>(),
                                      lst.data_ptr<int64_t>(), C, x_min, y_min, res, nx, ny, (int)tile,
                                      out.data_ptr<float>(), stream));
  else
    ok(perception_splat2d_forward_f64(prm.data_ptr<double>(), features.data_ptr<double>(), ptr.data_ptr<int64_t>(),
                                      lst.data_ptr<int64_t>(), C, x_min, y_min, res, nx, ny, (int)tile,
                                      out.data_ptr<double>(), stream));
  return out;
}

std::vector<torch::Tensor> splat2d_backward(torch::Tensor grad_out, torch::Tensor means, torch::Tensor scales,
                                            torch::Tensor rotations, torch::Tensor opacities, torch::Tensor features,
                                            double x_min, double y_min, double res, int64_t nx, int64_t ny) {
  const auto st = check_all({&grad_out, &means, &scales, &rotations, &opacities, &features});
  const c10::cuda::CUDAGuard guard(means.device());
  grad_out = grad_out.contiguous();
  features = features.contiguous();
  const int64_t G = features.size(0), C = features.size(1);
  auto gm = torch::zeros_like(means), gs = torch::zeros_like(scales), gr = torch::zeros_like(rotations),
       go = torch::zeros_like(opacities), gf = torch::zeros_like(features);
  if (G == 0) return {gm, gs, gr, go, gf};
  auto prm = params2d(means, scales, rotations, opacities);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (st == at::kFloat)
    ok(perception_splat2d_backward_f32(grad_out.data_ptr<float>(), prm.data_ptr<float>(), features.data_ptr<float>(),
                                       G, C, x_min, y_min, res, nx, ny, gm.data_ptr<float>(), gs.data_ptr<float>(),
                                       gr.data_ptr<float>(), go.data_ptr<float>(), gf.data_ptr<float>(), stream));
  else
    ok(perception_splat2d_backward_f64(grad_out.data_ptr<double>(), prm.data_ptr<double>(),
                                       features.data_ptr<double>(), G, C, x_min, y_min, res, nx, ny,
                                       gm.data_ptr<double>(), gs.data_ptr<double>(), gr.data_ptr<double>(),
                                       go.data_ptr<double>(), gf.data_ptr<double>(), stream));
  return {gm, gs, gr, go, gf};
}

torch::Tensor splat3d_forward(torch::Tensor means, torch::Tensor scales, torch::Tensor rotmats,
                              torch::Tensor opacities, torch::Tensor features, torch::Tensor ptr, torch::Tensor lst,
                              std::vector<double> origin, std::vector<double> voxel, std::vector<int64_t> shape,
                              std::vector<int64_t> tile) {
  const auto st = check_all({&means, &scales, &rotmats, &opacities, &features});
  TORCH_CHECK(origin.size() == 3 && voxel.size() == 3 && shape.size() == 3 && tile.size() == 3,
              "gaussian_splat: origin, voxel size, shape and tile need 3 entries");
  const c10::cuda::CUDAGuard guard(means.device());
  features = features.contiguous();
  const int64_t C = features.size(1);
  auto out = torch::zeros({C, shape[0], shape[1], shape[2]}, features.options());
  if (out.numel() == 0) return out;
  auto prm = params3d(means, scales, rotmats, opacities);
  ptr = ptr.contiguous();
  lst = lst.contiguous();
  const int tile_i[3] = {(int)tile[0], (int)tile[1], (int)tile[2]};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (st == at::kFloat)
    ok(perception_splat3d_forward_f32(prm.data_ptr<float>(), features.data_ptr<float>(), ptr.data_ptr<int64_t>(),
                                      lst.data_ptr<int64_t>(), C, origin.data(), voxel.data(), shape.data(), tile_i,
                                      out.data_ptr<float>(), stream));
  else
    ok(perception_splat3d_forward_f64(prm.data_ptr<double>(), features.data_ptr<double>(), ptr.data_ptr<int64_t>(),
                                      lst.data_ptr<int64_t>(), C, origin.data(), voxel.data(), shape.data(), tile_i,
                                      out.data_ptr<double>(), stream));
  return out;
}

std::vector<torch::Tensor> splat3d_backward(torch::Tensor grad_out, torch::Tensor means, torch::Tensor scales,
                                            torch::Tensor rotmats, torch::Tensor opacities, torch::Tensor features,
                                            std::vector<double> origin, std::vector<double> voxel,
                                            std::vector<int64_t> shape) {
  const auto st = check_all({&grad_out, &means, &scales, &rotmats, &opacities, &features});
  TORCH_CHECK(origin.size() == 3 && voxel.size() == 3 && shape.size() == 3,
              "gaussian_splat: origin, voxel size and shape need 3 entries");
  const c10::cuda::CUDAGuard guard(means.device());
  grad_out = grad_out.contiguous();
  features = features.contiguous();
  const int64_t G = features.size(0), C = features.size(1);
  auto gm = torch::zeros_like(means), gs = torch::zeros_like(scales), gr = torch::zeros_like(rotmats),
       go = torch::zeros_like(opacities), gf = torch::zeros_like(features);
  if (G == 0) return {gm, gs, gr, go, gf};
  auto prm = params3d(means, scales, rotmats, opacities);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (st == at::kFloat)
    ok(perception_splat3d_backward_f32(grad_out.data_ptr<float>(), prm.data_ptr<float>(), features.data_ptr<float>(),
                                       G, C, origin.data(), voxel.data(), shape.data(), gm.data_ptr<float>(),
                                       gs.data_ptr<float>(), gr.data_ptr<float>(), go.data_ptr<float>(),
                                       gf.data_ptr<float>(), stream));
  else
    ok(perception_splat3d_backward_f64(grad_out.data_ptr<double>(), prm.data_ptr<double>(),
                                       features.data_ptr<double>(), G, C, origin.data(), voxel.data(), shape.data(),
                                       gm.data_ptr<double>(), gs.data_ptr<double>(), gr.data_ptr<double>(),
                                       go.data_ptr<double>(), gf.data_ptr<double>(), stream));
  return {gm, gs, gr, go, gf};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("splat2d_forward", &splat2d_forward, "gaussian_splat_bev forward (CUDA)");
  m.def("splat2d_backward", &splat2d_backward, "gaussian_splat_bev backward (CUDA)");
  m.def("splat3d_forward", &splat3d_forward, "gaussian_splat_volume forward (CUDA)");
  m.def("splat3d_backward", &splat3d_backward, "gaussian_splat_volume backward (CUDA)");
}
