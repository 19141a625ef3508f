// The Hugging Face GPTQ checkpoint format (AutoGPTQ / Optimum / transformers): packing quantized
// linear layers into the tensors a checkpoint holds, reading them back, and the
// quantization_config of config.json. The quantizer itself (GPTQ, RTN) is models/gptq.h.
//
// Layout of a linear NAME with `in` inputs, `out` outputs, G groups, b bits (b in {2, 3, 4, 8}):
//   NAME.qweight  int32 [in*b/32, out]   levels, input rows packed along dim 0
//   NAME.qzeros   int32 [G, out*b/32]    zero points packed along dim 1; the classic format stores
//                                        (zero - 1) mod 2^b (so zero 0 is stored as 2^b - 1 and
//                                        read back as (stored + 1) mod 2^b), checkpoint_format
//                                        "gptq_v2" stores zero
//   NAME.scales   fp16  [G, out]
//   NAME.g_idx    int32 [in]             group of each input column (not monotone with desc_act)
// Packing, along the packed dimension: value j sits at bits [b*j, b*j + b) of a little-endian bit
// stream of 32-bit words, the lowest bits first. For 2, 4 and 8 bits that is 32/b whole values per
// word; for 3 bits 32 values fill 3 words and values 10 and 21 cross a word boundary (AutoGPTQ:
// word 0 holds values 0-9 and the low 2 bits of value 10, word 1 its high bit, values 11-20 and the
// low bit of value 21, word 2 its high 2 bits and values 22-31). So the packed dimension must be a
// multiple of 32/b (b = 2, 4, 8) or of 32 (b = 3).
// config.json quantization_config: quant_method "gptq", bits, group_size (-1: one group), desc_act,
// sym, and optionally checkpoint_format ("gptq" or "gptq_v2").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace origami {

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

struct GptqTensors {
  Tensor qweight;  // i32 [in*bits/32, out]
  Tensor qzeros;   // i32 [groups, out*bits/32]
  Tensor scales;   // f16 [groups, out]
  Tensor g_idx;    // i32 [in]
};

// True for the bit widths the format packs: 2, 3, 4 and 8.
bool gptq_packable_bits(int bits);
// Values per packing unit along a packed dimension: 32/bits for 2, 4, 8; 32 for 3 (in 3 words).
int64_t gptq_pack_multiple(int bits);

// Packs for bits 2, 3, 4 or 8; in and out must be multiples of gptq_pack_multiple(bits). v2:
// zeros stored as is ("gptq_v2"), else as zero - 1 (classic "gptq"). Scales are rounded to fp16.
GptqTensors pack_gptq(const QuantizedLinear& linear, bool v2 = false);

// The inverse, with shape and dtype checks whose errors name `name`.qweight etc. bits in
// {2, 3, 4, 8}; group_size from the config (-1: one group), checked against the number of groups.
// An undefined g_idx means the default c / group_size. scales may be f16, bf16 or f32; g_idx i32
// or i64. Classic zeros unpack as (stored + 1) mod 2^bits, as AutoGPTQ's reference dequantizer.
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
// The quantization_config object (JSON text) for `format`, the dampening used, and whether the
// linears of a layer were quantized one after the other on the outputs of those already quantized
// (AutoGPTQ's true_sequential) or all from the same pass (origami quantize).
std::string gptq_quantization_config_json(const GptqFormat& format, double percdamp = 0.01,
                                          bool true_sequential = false);

}  // namespace origami
