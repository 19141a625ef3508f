#include "tests/mpi/mpi_test.h"

namespace origami::test {

namespace {
int64_t pattern(int rank, int64_t i, int seed) {
  return ((int64_t(rank) * 131 + i * 17 + int64_t(seed) * 7) % 23 + 23) % 23 - 11;
}
}  // namespace

double input_value(int rank, int64_t i, int seed) {
  return double(pattern(rank, i, seed)) / 4.0;
}

int64_t input_int(int rank, int64_t i, int seed, DType dtype) {
  const int64_t v = pattern(rank, i, seed);
  return dtype == DType::i64 ? v + int64_t(rank) * 1'000'000'000'000 : v;
}

double expected_value(int rank, int64_t i, DType dtype, int seed) {
  return is_floating(dtype) ? input_value(rank, i, seed) : double(input_int(rank, i, seed, dtype));
}

Tensor make_input(int rank, int64_t n, DType dtype, int seed) {
  Tensor t = Tensor::empty({n}, dtype);
  for (int64_t i = 0; i < n; ++i) t.set_at(i, expected_value(rank, i, dtype, seed));
  return t;
}

}  // namespace origami::test
