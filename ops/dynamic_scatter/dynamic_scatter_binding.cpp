// Torch binding of the dynamic scatter kernels (dynamic_scatter.cu); called by perception/ops/scatter.py.
//
// dynamic_scatter_forward(feats [N, C] f32/f64, coors [N, 3] i32, reduce (0 mean, 1 max, 2 sum))
//   -> (voxel_feats [M, C], voxel_coors [M, 3] i32, point2voxel [N] i64, voxel_counts [M] i32)
// dynamic_scatter_backward(grad [M, C], feats, voxel_feats, point2voxel, voxel_counts, reduce) -> grad_feats [N, C]
//
// Voxels are the sorted unique linear keys (torch's unique), i.e. (z, y, x) order, as on the CPU.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <limits>
#include <tuple>

extern "C" {
const char* ds_keys_launch(const int* coors, int64_t n, int64_t Y, int64_t X, int64_t* keys, void* stream);
const char* ds_reduce_launch(const void* feats, int is_double, const int64_t* p2v, int64_t n, int64_t C, int is_max,
                             void* out, void* stream);
const char* ds_divide_launch(void* out, int is_double, const int* count, int64_t M, int64_t C, void* stream);
const char* ds_argmax_launch(const void* feats, const void* out, int is_double, const int64_t* p2v, int64_t n,
                             int64_t C, int* arg, void* stream);
const char* ds_grad_sum_launch(const void* grad, int is_double, const int64_t* p2v, const int* count, int64_t n,
                               int64_t C, int mean, void* gfeats, void* stream);
const char* ds_grad_max_launch(const void* grad, int is_double, const int64_t* p2v, const int* arg, int64_t n,
                               int64_t C, void* gfeats, void* stream);
}

namespace {

void check(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, "dynamic_scatter: ", what, " launch failed: ", err == nullptr ? "" : err);
}

void check_feats(const torch::Tensor& f, const char* name) {
  TORCH_CHECK(f.is_cuda() && f.dim() == 2, "dynamic_scatter: ", name, " must be a 2-D CUDA tensor");
  TORCH_CHECK(f.scalar_type() == torch::kFloat || f.scalar_type() == torch::kDouble, "dynamic_scatter: ", name,
              " must be float32 or float64");
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> dynamic_scatter_forward(torch::Tensor feats,
                                                                                               torch::Tensor coors,
                                                                                               int64_t reduce) {
  check_feats(feats, "feats");
  TORCH_CHECK(coors.is_cuda() && coors.dim() == 2 && coors.size(1) == 3 && coors.scalar_type() == torch::kInt,
              "dynamic_scatter: coors must be [N, 3] int32 on CUDA");
  TORCH_CHECK(coors.size(0) == feats.size(0) && coors.device() == feats.device(),
              "dynamic_scatter: feats and coors must have one row per point, on one device");
  TORCH_CHECK(reduce >= 0 && reduce <= 2, "dynamic_scatter: reduce must be 0 (mean), 1 (max) or 2 (sum)");
  const c10::cuda::CUDAGuard guard(feats.device());
  feats = feats.contiguous();
  coors = coors.contiguous();
  const int64_t n = feats.size(0), C = feats.size(1);
  const auto iopt = coors.options();
  const auto lopt = coors.options().dtype(torch::kLong);
  void* stream = (void*)c10::cuda::getCurrentCUDAStream().stream();
  const int is_double = feats.scalar_type() == torch::kDouble;

  auto valid = (coors >= 0).all(1);
  if (n == 0 || !valid.any().item<bool>())
    return {torch::zeros({0, C}, feats.options()), torch::zeros({0, 3}, iopt), torch::full({n}, -1, lopt),
            torch::zeros({0}, iopt)};
  auto mx = torch::where(valid.unsqueeze(1), coors, torch::full_like(coors, -1)).amax(0).cpu();
  const int64_t Z = mx[0].item<int64_t>() + 1, Y = mx[1].item<int64_t>() + 1, X = mx[2].item<int64_t>() + 1;
  TORCH_CHECK(Z <= (int64_t(1) << 62) / Y / X, "dynamic_scatter: coordinates do not fit a 64-bit linear key");
  auto keys = torch::empty({n}, lopt);
  check(ds_keys_launch(coors.data_ptr<int>(), n, Y, X, keys.data_ptr<int64_t>(), stream), "keys");

  torch::Tensor uniq, inv, cnt;
  std::tie(uniq, inv, cnt) = at::_unique2(keys, /*sorted=*/true, /*return_inverse=*/true, /*return_counts=*/true);
  if (uniq[0].item<int64_t>() < 0) {  // the ignored points' key -1 sorts first: drop it, shift the inverse
    uniq = uniq.slice(0, 1);
    cnt = cnt.slice(0, 1);
    inv = inv - 1;  // ignored points -> -1
  }
  const int64_t M = uniq.size(0);
  auto p2v = inv.reshape({n}).to(torch::kLong).contiguous();
  auto counts = cnt.to(torch::kInt).contiguous();
  auto vcoors = torch::stack({torch::div(uniq, Y * X, "floor"), torch::remainder(torch::div(uniq, X, "floor"), Y),
                              torch::remainder(uniq, X)},
                             1)
                    .to(torch::kInt)
                    .contiguous();

  auto out = reduce == 1 ? torch::full({M, C}, -std::numeric_limits<double>::infinity(), feats.options())
                         : torch::zeros({M, C}, feats.options());
  check(ds_reduce_launch(feats.data_ptr(), is_double, p2v.data_ptr<int64_t>(), n, C, reduce == 1, out.data_ptr(),
                         stream),
        "reduce");
  if (reduce == 0)
    check(ds_divide_launch(out.data_ptr(), is_double, counts.data_ptr<int>(), M, C, stream), "divide");
  return {out, vcoors, p2v, counts};
}

torch::Tensor dynamic_scatter_backward(torch::Tensor grad, torch::Tensor feats, torch::Tensor voxel_feats,
                                       torch::Tensor point2voxel, torch::Tensor voxel_counts, int64_t reduce) {
  check_feats(grad, "grad");
  check_feats(feats, "feats");
  TORCH_CHECK(point2voxel.is_cuda() && point2voxel.scalar_type() == torch::kLong,
              "dynamic_scatter: point2voxel must be int64 on CUDA");
  TORCH_CHECK(voxel_counts.is_cuda() && voxel_counts.scalar_type() == torch::kInt,
              "dynamic_scatter: voxel_counts must be int32 on CUDA");
  const c10::cuda::CUDAGuard guard(grad.device());
  grad = grad.contiguous();
  feats = feats.contiguous();
  point2voxel = point2voxel.contiguous();
  voxel_counts = voxel_counts.contiguous();
  const int64_t n = feats.size(0), C = feats.size(1), M = grad.size(0);
  const int is_double = grad.scalar_type() == torch::kDouble;
  void* stream = (void*)c10::cuda::getCurrentCUDAStream().stream();
  auto gfeats = torch::empty({n, C}, grad.options());
  if (reduce == 1) {
    TORCH_CHECK(voxel_feats.sizes() == grad.sizes(), "dynamic_scatter: voxel_feats must match grad");
    auto vf = voxel_feats.contiguous();
    auto arg = torch::full({std::max<int64_t>(M, 1), C}, INT_MAX, point2voxel.options().dtype(torch::kInt));
    check(ds_argmax_launch(feats.data_ptr(), vf.data_ptr(), is_double, point2voxel.data_ptr<int64_t>(), n, C,
                           arg.data_ptr<int>(), stream),
          "argmax");
    check(ds_grad_max_launch(grad.data_ptr(), is_double, point2voxel.data_ptr<int64_t>(), arg.data_ptr<int>(), n, C,
                             gfeats.data_ptr(), stream),
          "grad_max");
  } else {
    check(ds_grad_sum_launch(grad.data_ptr(), is_double, point2voxel.data_ptr<int64_t>(), voxel_counts.data_ptr<int>(),
                             n, C, reduce == 0, gfeats.data_ptr(), stream),
          "grad_sum");
  }
  return gfeats;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dynamic_scatter_forward", &dynamic_scatter_forward, "dynamic scatter forward (CUDA)");
  m.def("dynamic_scatter_backward", &dynamic_scatter_backward, "dynamic scatter backward (CUDA)");
}
