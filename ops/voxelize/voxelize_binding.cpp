// Torch binding of the voxelization kernels (voxelize.cu); called by perception/ops/voxelize.py.
//
// hard_voxelize(points [N, C] f32/f64 CUDA, voxel_size [3], range_min [3], grid [3], P, max_voxels (<0: all))
//   -> (voxels [M, P, C], coords [M, 3] i32 (z, y, x), num_points [M] i32,
//       dropped [3] i64 = non-finite, out of range, over capacity)
// dynamic_voxelize(points, voxel_size, range_min, grid) -> (coors [N, 3] i32, dropped [2] i64)
//
// voxel_size / range_min arrive float32-rounded (Python rounds them); the prefix sums use torch.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <tuple>
#include <vector>

extern "C" {
const char* vx_keys_launch(const void* pts, int is_double, int64_t n, int64_t C, const double* lo, const double* vs,
                           const int64_t* grid, int sy, int sz, int64_t* keys, unsigned long long* counters,
                           void* stream);
const char* vx_dynamic_launch(const void* pts, int is_double, int64_t n, int64_t C, const double* lo,
                              const double* vs, const int64_t* grid, int* coors, unsigned long long* counters,
                              void* stream);
const char* vx_insert_launch(const int64_t* keys, int64_t n, unsigned long long* tkeys, int* tfirst, int bits,
                             int* slot_of, void* stream);
const char* vx_flags_launch(const int64_t* keys, const int* slot_of, const int* tfirst, int64_t n, int* flags,
                            void* stream);
const char* vx_slot_vid_launch(const int* flags, const int* slot_of, const int* excl, int64_t n, int* vid_of_slot,
                               void* stream);
const char* vx_count_launch(const int64_t* keys, const int* slot_of, const int* vid_of_slot, int64_t n, int64_t M,
                            int* point_vid, int* count, void* stream);
const char* vx_bucket_launch(const int* point_vid, int64_t n, const int64_t* offsets, int* cursor, int* list,
                             void* stream);
const char* vx_select_launch(const void* pts, int is_double, int64_t C, const int* list, const int64_t* offsets,
                             const int* count, const int64_t* keys, int64_t M, int P, int sy, int sz, void* voxels,
                             int* coords, int* num, void* stream);
}

namespace {

void check(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, "voxelize: ", what, " launch failed: ", err == nullptr ? "" : err);
}

int bit_length(int64_t v) {  // bits to hold 0..v
  int b = 0;
  while (v > 0) {
    ++b;
    v >>= 1;
  }
  return b;
}

void check_inputs(const torch::Tensor& points, const std::vector<double>& vs, const std::vector<double>& lo,
                  const std::vector<int64_t>& grid) {
  TORCH_CHECK(points.is_cuda(), "voxelize: points must be a CUDA tensor");
  TORCH_CHECK(points.dim() == 2 && points.size(1) >= 3, "voxelize: points must be [N, C>=3]");
  TORCH_CHECK(points.scalar_type() == torch::kFloat || points.scalar_type() == torch::kDouble,
              "voxelize: points must be float32 or float64");
  TORCH_CHECK(vs.size() == 3 && lo.size() == 3 && grid.size() == 3, "voxelize: need 3 sizes, 3 minima, 3 grid dims");
  TORCH_CHECK(points.size(0) < INT_MAX / 2, "voxelize: at most 2^30 points per call");
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> hard_voxelize(
    torch::Tensor points, std::vector<double> vs, std::vector<double> lo, std::vector<int64_t> grid, int64_t P,
    int64_t max_voxels) {
  check_inputs(points, vs, lo, grid);
  TORCH_CHECK(P >= 1, "voxelize: max_points_per_voxel must be >= 1");
  const c10::cuda::CUDAGuard guard(points.device());
  points = points.contiguous();
  const int64_t n = points.size(0), C = points.size(1);
  const auto iopt = points.options().dtype(torch::kInt);
  const auto lopt = points.options().dtype(torch::kLong);
  if (n == 0)
    return {torch::zeros({0, P, C}, points.options()), torch::zeros({0, 3}, iopt), torch::zeros({0}, iopt),
            torch::zeros({3}, lopt)};
  const int is_double = points.scalar_type() == torch::kDouble;
  void* stream = (void*)c10::cuda::getCurrentCUDAStream().stream();
  const int bx = bit_length(grid[0] - 1), by = bit_length(grid[1] - 1), bz = bit_length(grid[2] - 1);
  TORCH_CHECK(bx + by + bz <= 62, "voxelize: grid too large for a 64-bit cell key");
  const int sy = bx, sz = bx + by;

  auto counters = torch::zeros({2}, lopt);
  auto keys = torch::empty({n}, lopt);
  check(vx_keys_launch(points.data_ptr(), is_double, n, C, lo.data(), vs.data(), grid.data(), sy, sz,
                       keys.data_ptr<int64_t>(), (unsigned long long*)counters.data_ptr<int64_t>(), stream),
        "keys");

  const int bits = std::max(4, bit_length(2 * n - 1));  // 2^bits >= 2 n
  auto tkeys = torch::full({int64_t(1) << bits}, -1, lopt);  // all-ones bytes = empty
  auto tfirst = torch::full({int64_t(1) << bits}, INT_MAX, iopt);
  auto slot_of = torch::empty({n}, iopt);
  check(vx_insert_launch(keys.data_ptr<int64_t>(), n, (unsigned long long*)tkeys.data_ptr<int64_t>(),
                         tfirst.data_ptr<int>(), bits, slot_of.data_ptr<int>(), stream),
        "insert");
  auto flags = torch::empty({n}, iopt);
  check(vx_flags_launch(keys.data_ptr<int64_t>(), slot_of.data_ptr<int>(), tfirst.data_ptr<int>(), n,
                        flags.data_ptr<int>(), stream),
        "flags");
  auto incl = torch::cumsum(flags, 0, torch::kInt);
  const int64_t total = incl[n - 1].item<int64_t>();
  auto excl = incl - flags;
  auto vid_of_slot = torch::empty({int64_t(1) << bits}, iopt);
  check(vx_slot_vid_launch(flags.data_ptr<int>(), slot_of.data_ptr<int>(), excl.data_ptr<int>(), n,
                           vid_of_slot.data_ptr<int>(), stream),
        "slot_vid");

  const int64_t M = max_voxels < 0 ? total : std::min(total, max_voxels);
  auto count = torch::zeros({std::max<int64_t>(M, 1)}, iopt);
  auto point_vid = torch::empty({n}, iopt);
  check(vx_count_launch(keys.data_ptr<int64_t>(), slot_of.data_ptr<int>(), vid_of_slot.data_ptr<int>(), n, M,
                        point_vid.data_ptr<int>(), count.data_ptr<int>(), stream),
        "count");
  auto count_l = count.to(torch::kLong);
  auto offsets = (torch::cumsum(count_l, 0) - count_l).contiguous();
  auto cursor = torch::zeros_like(count);
  auto list = torch::empty({n}, iopt);
  check(vx_bucket_launch(point_vid.data_ptr<int>(), n, offsets.data_ptr<int64_t>(), cursor.data_ptr<int>(),
                         list.data_ptr<int>(), stream),
        "bucket");

  auto voxels = torch::empty({M, P, C}, points.options());
  auto coords = torch::empty({M, 3}, iopt);
  auto num = torch::empty({M}, iopt);
  check(vx_select_launch(points.data_ptr(), is_double, C, list.data_ptr<int>(), offsets.data_ptr<int64_t>(),
                         count.data_ptr<int>(), keys.data_ptr<int64_t>(), M, (int)P, sy, sz, voxels.data_ptr(),
                         coords.data_ptr<int>(), num.data_ptr<int>(), stream),
        "select");
  auto nvalid = n - counters.sum();
  auto dropped = torch::stack({counters[0], counters[1], nvalid - num.sum().to(torch::kLong)});
  return {voxels, coords, num, dropped};
}

std::tuple<torch::Tensor, torch::Tensor> dynamic_voxelize(torch::Tensor points, std::vector<double> vs,
                                                          std::vector<double> lo, std::vector<int64_t> grid) {
  check_inputs(points, vs, lo, grid);
  const c10::cuda::CUDAGuard guard(points.device());
  points = points.contiguous();
  const int64_t n = points.size(0), C = points.size(1);
  auto coors = torch::empty({n, 3}, points.options().dtype(torch::kInt));
  auto counters = torch::zeros({2}, points.options().dtype(torch::kLong));
  void* stream = (void*)c10::cuda::getCurrentCUDAStream().stream();
  check(vx_dynamic_launch(points.data_ptr(), points.scalar_type() == torch::kDouble, n, C, lo.data(), vs.data(),
                          grid.data(), coors.data_ptr<int>(), (unsigned long long*)counters.data_ptr<int64_t>(),
                          stream),
        "dynamic");
  return {coors, counters};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hard_voxelize", &hard_voxelize, "hard voxelization (CUDA)");
  m.def("dynamic_voxelize", &dynamic_voxelize, "dynamic voxelization (CUDA)");
}
