// Torch binding of the MSF voxel-sampler pooling kernels (proposal_point_pool.cu).
// select(points [N, C] f32/f64, frame_offsets [T+1] i64, cylinders [T, K, 6] f64, P, 1/voxel, grid dims, seed)
//   -> (indices [T, K, P] i64, counts [T, K] i64, dropped [] i64 = points with a non-finite xyz);
// all tensors on one CUDA device.
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>

extern "C" const char* ppp_bucket_launch(const void* pts, int is_double, int64_t n, int64_t c,
                                         const int64_t* offsets, int T, double ivx, double ivy, double ivz,
                                         int64_t bxy, int64_t bz, int64_t* point_slot, int64_t* counts,
                                         void* stream);
extern "C" const char* ppp_scatter_launch(int64_t n, const int64_t* point_slot, int64_t* cursor,
                                          int64_t* sorted_idx, void* stream);
extern "C" const char* ppp_query_launch(const void* pts, int is_double, int64_t c, const int64_t* offsets,
                                        const double* cyl, int T, int K, double ivx, double ivy, double ivz,
                                        int64_t bxy, int64_t bz, const int64_t* starts,
                                        const int64_t* sorted_idx, int64_t cap, int64_t seed, int64_t* out_idx,
                                        int64_t* out_cnt, void* stream);

static void ppp_check(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, "proposal_point_pool: ", what, " launch failed: ", err == nullptr ? "" : err);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> ppp_select(
    torch::Tensor points, torch::Tensor frame_offsets, torch::Tensor cylinders, int64_t max_points, double ivx,
    double ivy, double ivz, int64_t bxy, int64_t bz, int64_t seed) {
  TORCH_CHECK(points.is_cuda() && frame_offsets.is_cuda() && cylinders.is_cuda(),
              "proposal_point_pool: points, frame_offsets and cylinders must be CUDA tensors");
  TORCH_CHECK(points.device() == frame_offsets.device() && points.device() == cylinders.device(),
              "proposal_point_pool: all tensors must be on one device");
  TORCH_CHECK(points.dim() == 2 && points.size(1) >= 3, "proposal_point_pool: points must be [N, C>=3]");
  TORCH_CHECK(points.scalar_type() == torch::kFloat || points.scalar_type() == torch::kDouble,
              "proposal_point_pool: points must be float32 or float64");
  TORCH_CHECK(frame_offsets.dim() == 1 && frame_offsets.scalar_type() == torch::kLong,
              "proposal_point_pool: frame_offsets must be 1-D int64");
  TORCH_CHECK(cylinders.dim() == 3 && cylinders.size(2) == 6 && cylinders.scalar_type() == torch::kDouble,
              "proposal_point_pool: cylinders must be [T, K, 6] float64");
  TORCH_CHECK(frame_offsets.size(0) == cylinders.size(0) + 1,
              "proposal_point_pool: frame_offsets must have T+1 entries");
  TORCH_CHECK(max_points >= 1 && bxy >= 1 && bz >= 1 && (bxy & (bxy - 1)) == 0 && (bz & (bz - 1)) == 0,
              "proposal_point_pool: need max_points >= 1 and power-of-two grid dims");
  const c10::cuda::CUDAGuard guard(points.device());
  points = points.contiguous();
  frame_offsets = frame_offsets.contiguous();
  cylinders = cylinders.contiguous();
  const int64_t n = points.size(0), c = points.size(1), T = cylinders.size(0), K = cylinders.size(1);
  const auto lopt = points.options().dtype(torch::kLong);
  auto out_idx = torch::full({T, K, max_points}, -1, lopt);
  auto out_cnt = torch::zeros({T, K}, lopt);
  if (n == 0) return {out_idx, out_cnt, torch::zeros({}, lopt)};
  const int is_double = points.scalar_type() == torch::kDouble;
  void* stream = (void*)c10::cuda::getCurrentCUDAStream().stream();
  const int64_t B = bxy * bxy * bz;

  auto point_slot = torch::empty({std::max<int64_t>(n, 1)}, lopt);
  auto counts = torch::zeros({T * (B + 1)}, lopt);  // counts[g + 1] = points in bucket g
  ppp_check(ppp_bucket_launch(points.data_ptr(), is_double, n, c, frame_offsets.data_ptr<int64_t>(), (int)T,
                              ivx, ivy, ivz, bxy, bz, point_slot.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                              stream),
            "bucket");
  auto starts = counts.cumsum(0);  // bucket g: sorted_idx[starts[g] : starts[g + 1]]
  auto cursor = starts.clone();
  auto sorted_idx = torch::empty({std::max<int64_t>(n, 1)}, lopt);
  ppp_check(ppp_scatter_launch(n, point_slot.data_ptr<int64_t>(), cursor.data_ptr<int64_t>(),
                               sorted_idx.data_ptr<int64_t>(), stream),
            "scatter");
  ppp_check(ppp_query_launch(points.data_ptr(), is_double, c, frame_offsets.data_ptr<int64_t>(),
                             cylinders.data_ptr<double>(), (int)T, (int)K, ivx, ivy, ivz, bxy, bz,
                             starts.data_ptr<int64_t>(), sorted_idx.data_ptr<int64_t>(), max_points, seed,
                             out_idx.data_ptr<int64_t>(), out_cnt.data_ptr<int64_t>(), stream),
            "query");
  auto dropped = point_slot.narrow(0, 0, n).lt(0).sum();  // non-finite points got slot -1
  return {out_idx, out_cnt, dropped};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("select", &ppp_select, "MSF voxel-sampler pooling: (indices [T,K,P], counts [T,K]) per frame and proposal");
}
