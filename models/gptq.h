// Post-training weight quantization of linear layers: GPTQ (Frantar et al., 2022, as implemented
// by AutoGPTQ) and round-to-nearest (RTN).
//
// Quantizer (per output row and group of input columns, b bits, maxq = 2^b - 1):
//   xmin = min(min w, 0), xmax = max(max w, 0)             (the range always holds 0)
//   sym:  xmax = max(|xmin|, xmax); xmin = -xmax where xmin < 0 (as AutoGPTQ: a group with no
//         negative weight keeps xmin = 0)
//   xmin = -1, xmax = +1 where both are 0 (an all-zero group)
//   scale = (xmax - xmin) / maxq; zero = sym ? (maxq + 1) / 2 : round(-xmin / scale)
//   q = clamp(round(w / scale) + zero, 0, maxq)  (round half to even), w^ = scale * (q - zero)
// RTN applies it to the original weights.
//
// GPTQ, for W [rows = out, cols = in] and the Hessian H = 2 X X^T / N of the layer's inputs
// X [in, N] (HessianAccumulator):
//   1. Dead columns (H_ii = 0) get H_ii = 1 and W[:, i] = 0. H += lambda I with
//      lambda = percdamp * mean(diag H).
//   2. act_order: columns (and H) permuted by decreasing diag H (stable), undone at the end.
//   3. U = upper Cholesky factor of H^-1 (U^T U = H^-1).
//   4. Columns in blocks of block_size. Column i of a block: q = quant(W[:, i]),
//      e = (W[:, i] - w^) / U_ii, W[:, j] -= e U_ij for the later columns j of the block; after the
//      block, W[:, rest] -= E_block U[block, rest]. With groups, at each column that is a multiple
//      of group_size (in the permuted order), the group's scale and zero come from W[:, i : i+g]
//      as updated by the earlier blocks (not by the earlier columns of the same block; this is
//      AutoGPTQ's choice, and the same thing when group_size is a multiple of block_size). With
//      group_size -1 there is one group whose parameters come from the original W (before step 1),
//      as AutoGPTQ.
//   The math is in double; the levels come from the double scale, which is then stored as float.
//
// The Hugging Face GPTQ checkpoint format (packing, quantization_config) is
// runtime/gptq_format.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/gptq_format.h"
#include "runtime/tensor.h"

namespace origami::models {

struct QuantConfig {
  int bits = 4;              // 2..8
  int64_t group_size = 128;  // input columns per scale/zero; -1: one group per row
  bool sym = false;          // zero fixed at 2^(bits-1)
  bool act_order = false;    // GPTQ only: columns in order of decreasing H_ii
  double percdamp = 0.01;    // GPTQ only: dampening, a fraction of mean(diag H)
  int64_t block_size = 128;  // GPTQ only: columns per lazy batch update
};

// The quantized weight and the checkpoint format live in runtime/gptq_format.h; these names keep
// working in models.
using origami::gptq_format_from_config_text;
using origami::gptq_quantization_config_json;
using origami::GptqFormat;
using origami::GptqTensors;
using origami::pack_gptq;
using origami::QuantizedLinear;
using origami::unpack_gptq;

// Accumulates H = 2 X X^T / N over batches of a layer's inputs (N: all tokens so far) in double,
// so calibration data can be fed batch by batch. Memory: cols^2 doubles.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t cols);
  // x: [tokens, cols] row-major, one input vector per token.
  void add(const float* x, int64_t tokens, int64_t cols);
  int64_t cols() const { return cols_; }
  int64_t tokens() const { return tokens_; }
  std::vector<double> hessian() const;  // [cols*cols], 2 X X^T / N (zeros when N = 0)

 private:
  int64_t cols_;
  int64_t tokens_ = 0;
  std::vector<double> sum_;  // upper triangle of X X^T, row-major [cols*cols]
};

QuantizedLinear gptq_quantize(const float* w, int64_t rows, int64_t cols,
                              const HessianAccumulator& hessian, const QuantConfig& config);
QuantizedLinear rtn_quantize(const float* w, int64_t rows, int64_t cols, const QuantConfig& config);

// ---- linear algebra (exposed for tests)
// ----------------------------------------------------------

// In place: the lower Cholesky factor L of the symmetric positive-definite a [n*n] (A = L L^T;
// the upper triangle is zeroed). Throws origami::Error naming the column if a pivot is <= 0.
void cholesky_lower(std::vector<double>& a, int64_t n);
// The upper Cholesky factor U of A^-1 (U^T U = A^-1), A [n*n] symmetric positive-definite.
std::vector<double> inverse_upper_cholesky(const std::vector<double>& a, int64_t n);

}  // namespace origami::models
