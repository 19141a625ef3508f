// Shared pieces of the op tests: which device to test, random inputs, host arrays in double,
// tolerances (stated once, here), comparisons, finite differences, and the PyTorch reference.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace origami::test {

// ---- device under test ------------------------------------------------------------------------
// ORIGAMI_TEST_DEVICE=cpu (default) or cuda. The same test binary runs on either.
Device test_device();
bool test_device_available();  // false for cuda without a usable GPU
#define ORIGAMI_REQUIRE_TEST_DEVICE()                                                  \
  do {                                                                                 \
    if (!::origami::test::test_device_available())                                     \
      GTEST_SKIP() << "no CUDA device on this machine (ORIGAMI_TEST_DEVICE=cuda)";     \
  } while (0)

// The float dtypes every float op is tested in.
inline std::vector<DType> float_dtypes() { return {DType::f32, DType::bf16}; }

// ---- tolerances: one place for every op test ----------------------------------------------------
// A result passes when max|actual - expected| <= rel * max|expected| + abs, max over finite
// expected values; non-finite expected values (NaN, +-inf) must be matched exactly.
struct Tolerance {
  double rel;
  double abs;
};
// f32: 1e-5 relative (to the tensor's largest value); bf16: 1e-2.
Tolerance tolerance_for(DType dtype);
// Finite differences in fp32 carry their own truncation and rounding error: 1e-2.
constexpr double kFiniteDifferenceTolerance = 1e-2;

// ---- host arrays in double (references) --------------------------------------------------------
struct HostArray {
  Shape shape;
  std::vector<double> data;
  int64_t numel() const { return int64_t(data.size()); }
  double& operator[](int64_t i) { return data[size_t(i)]; }
  double operator[](int64_t i) const { return data[size_t(i)]; }
};
HostArray host_array(const Shape& shape, double fill = 0.0);
HostArray to_host_array(const Tensor& t);  // any device and dtype

// ---- random inputs (on the CPU; values exactly representable in `dtype`) --------------------------
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, double lo = -1.0,
                     double hi = 1.0);
Tensor random_ints(const Shape& shape, DType dtype, int64_t lo, int64_t hi_exclusive, uint64_t seed);

// A copy of a CPU tensor on the device under test (always a copy, also when that is the CPU, so
// ops writing into it never change the caller's reference inputs).
Tensor on_test_device(const Tensor& cpu);
// An uninitialised (NaN-filled for floats, to catch unwritten elements) tensor on the test device.
Tensor empty_on_test_device(const Shape& shape, DType dtype);

// ---- comparison --------------------------------------------------------------------------------
::testing::AssertionResult all_close(const Tensor& actual, const HostArray& expected, Tolerance tol);
::testing::AssertionResult all_close(const HostArray& actual, const HostArray& expected,
                                     Tolerance tol);
#define EXPECT_ALL_CLOSE(actual, expected, ...)                                   \
  EXPECT_TRUE(::origami::test::all_close((actual), (expected), (__VA_ARGS__))) \
      << "  what: " #actual

// ---- errors ------------------------------------------------------------------------------------
// Runs `fn` and expects an origami::Error whose message contains every piece of `parts` (the op,
// the argument, the shapes); a missing error or piece fails the calling test.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts);

// ---- finite differences ----------------------------------------------------------------------
// Checks analytic gradient `grad` of the scalar `loss()` with respect to CPU f32 tensor `x`, by
// central differences with step h at `samples` coordinates chosen from `seed`. Returns the worst
// |fd - analytic| / max(max|grad|, 1e-6).
double finite_difference_error(const std::function<double()>& loss, Tensor& x, const Tensor& grad,
                               int samples = 12, double h = 1e-2, uint64_t seed = 7);
// Sum of x * w in double (w the same shape), a scalar loss for finite differences.
double weighted_sum(const Tensor& x, const Tensor& w);

// ---- PyTorch reference -----------------------------------------------------------------------
// One case for tests/golden/torch_ops.py: an op name (a key of some tests/golden/ref_*.py OPS
// table), parameters as a JSON object text, and named inputs (saved as .npy; bf16 saved as f32).
struct TorchCase {
  std::string name;
  std::string op;
  std::string params_json = "{}";
  std::vector<std::pair<std::string, Tensor>> inputs;
};
// Runs every case in one Python process (Debian's torch, float64) and returns its outputs keyed
// "case_name/output_name". Fails the calling test (ADD_FAILURE) when Python fails.
std::map<std::string, HostArray> run_torch(const std::vector<TorchCase>& cases);

// ---- .npy files ------------------------------------------------------------------------------
void write_npy(const std::string& path, const Tensor& t);  // f32, i32, i64 (bf16/f16 as f32)
HostArray read_npy(const std::string& path);               // <f4, <f8, <i4, <i8, |u1

}  // namespace origami::test
