// Shared pieces of the multi-rank tests (run under mpirun by ctest, label mpi).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace origami::test {

// The communicator over every rank, created by main() after MPI starts (timeout 20 s, so that a
// test that leaves ranks out of step fails instead of hanging).
Communicator& mpi_world();

// Deterministic input values: element i of rank r under `seed`, a multiple of 1/4 in
// [-2.75, 2.75] -- exact in bf16, and sums of up to 8 of them are exact in bf16 and fp32.
double input_value(int rank, int64_t i, int seed);
// An integer variant for i32/i64, with a large rank-dependent offset in i64 to catch truncation.
int64_t input_int(int rank, int64_t i, int seed, DType dtype);
// A CPU tensor of `n` elements of `dtype` filled with the values above.
Tensor make_input(int rank, int64_t n, DType dtype, int seed);
// The value a filled tensor should hold (as double) for element i of rank r.
double expected_value(int rank, int64_t i, DType dtype, int seed);

// Expects `fn` to throw origami::Error whose message contains every piece.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an origami::Error containing '" << pieces[0] << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& p : pieces) EXPECT_NE(what.find(p), std::string::npos) << what;
  }
}

}  // namespace origami::test
