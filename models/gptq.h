// Post-training weight quantization of linear layers: GPTQ (Frantar et al., 2022, as implemented
// by AutoGPTQ) and round-to-nearest (RTN), and the Hugging Face GPTQ tensor layout
// (AutoGPTQ / Optimum / transformers).
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
// Hugging Face GPTQ layout of a linear NAME with `in` inputs, `out` outputs, G groups, b bits
// (b in {2, 4, 8}: 32/b values per int32 word, the lowest bits first):
//   NAME.qweight  int32 [in*b/32, out]   levels, input rows packed along dim 0
//   NAME.qzeros   int32 [G, out*b/32]    zero points packed along dim 1; the classic format stores
//                                        (zero - 1) mod 2^b (so zero 0 is stored as 2^b - 1 and
//                                        read back as (stored + 1) mod 2^b), checkpoint_format
//                                        "gptq_v2" stores zero
//   NAME.scales   fp16  [G, out]
//   NAME.g_idx    int32 [in]             group of each input column (not monotone with desc_act)
// config.json quantization_config: quant_method "gptq", bits, group_size (-1: one group), desc_act,
// sym, and optionally checkpoint_format ("gptq" or "gptq_v2").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// A quantized weight [rows = out, cols = in]: w^[r, c] = scale(r, g) * (q[r, c] - zero(r, g)) with
// g = g_idx[c].
struct QuantizedLinear {
  int64_t rows = 0, cols = 0;
  int bits = 4;
  int64_t group_size = -1;     // as configured (-1: one group)
  std::vector<int32_t> q;      // [rows*cols] levels in 0..2^bits-1, original column order
  std::vector<float> scales;   // [groups*rows], scale(r, g) at g*rows + r
  std::vector<int32_t> zeros;  // [groups*rows] zero points (the level of w = 0)
  std::vector<int32_t> g_idx;  // [cols] group of each column
  int64_t groups() const { return int64_t(scales.size()) / (rows > 0 ? rows : 1); }
  std::vector<float> dequantize() const;  // [rows*cols]
};

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

// ---- Hugging Face GPTQ tensors
// -------------------------------------------------------------------

struct GptqTensors {
  Tensor qweight;  // i32 [in*bits/32, out]
  Tensor qzeros;   // i32 [groups, out*bits/32]
  Tensor scales;   // f16 [groups, out]
  Tensor g_idx;    // i32 [in]
};

// Packs for bits 2, 4 or 8 (3-bit packing crosses word boundaries in AutoGPTQ and is not
// supported); in and out must be multiples of 32/bits. v2: zeros stored as is ("gptq_v2"), else
// as zero - 1 (classic "gptq"). Scales are rounded to fp16.
GptqTensors pack_gptq(const QuantizedLinear& linear, bool v2 = false);

// The inverse, with shape and dtype checks whose errors name `name`.qweight etc. bits in {2, 4, 8};
// group_size from the config (-1: one group), checked against the number of groups. An undefined
// g_idx means the default c / group_size. scales may be f16, bf16 or f32; g_idx i32 or i64.
// Classic zeros unpack as (stored + 1) mod 2^bits, as AutoGPTQ's reference dequantizer.
QuantizedLinear unpack_gptq(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales,
                            const Tensor& g_idx, int bits, int64_t group_size, bool v2 = false,
                            const std::string& name = "linear");

// The quantization_config of a GPTQ checkpoint's config.json.
struct GptqFormat {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group
  bool desc_act = false;     // act-order (g_idx not monotone)
  bool sym = true;
  bool v2 = false;  // checkpoint_format "gptq_v2": qzeros hold zero, not zero - 1
};
// Reads quantization_config from config.json text; `label` names it in messages. Throws
// origami::Error naming the field when it is missing, not "gptq", or out of range.
GptqFormat gptq_format_from_config_text(const std::string& json_text, const std::string& label);
// The quantization_config object (JSON text) for `format` and the dampening used.
std::string gptq_quantization_config_json(const GptqFormat& format, double percdamp = 0.01);

// ---- linear algebra (exposed for tests)
// ----------------------------------------------------------

// In place: the lower Cholesky factor L of the symmetric positive-definite a [n*n] (A = L L^T;
// the upper triangle is zeroed). Throws origami::Error naming the column if a pivot is <= 0.
void cholesky_lower(std::vector<double>& a, int64_t n);
// The upper Cholesky factor U of A^-1 (U^T U = A^-1), A [n*n] symmetric positive-definite.
std::vector<double> inverse_upper_cholesky(const std::vector<double>& a, int64_t n);

}  // namespace origami::models
