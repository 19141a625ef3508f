// The Hugging Face GPTQ checkpoint format (see gptq_format.h).
#include "runtime/gptq_format.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "runtime/dtype.h"
#include "runtime/error.h"

namespace origami {

std::vector<float> QuantizedLinear::dequantize() const {
  std::vector<float> w(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const size_t p = size_t(int64_t(g_idx[size_t(c)]) * rows + r);
      w[size_t(r * cols + c)] = scales[p] * float(q[size_t(r * cols + c)] - zeros[p]);
    }
  return w;
}

// ---- Hugging Face GPTQ packing ----------------------------------------------------------------

namespace {

void check_pack_bits(int bits, const std::string& what) {
  ORIGAMI_CHECK(gptq_packable_bits(bits), what, ": GPTQ packing supports 2, 3, 4 and 8 bits, got ",
                bits);
}

// Value i of a packed stream: bits [b*i, b*i + b) of the words word(0), word(1), ... (each word's
// lowest bit first); a value may start in one word and end in the next (3 bits).
template <typename Word>
inline uint32_t stream_get(const Word& word, int64_t i, int bits) {
  const int64_t bit = int64_t(bits) * i, w = bit / 32;
  const int shift = int(bit % 32);
  uint64_t v = uint64_t(uint32_t(word(w))) >> shift;
  if (shift + bits > 32) v |= uint64_t(uint32_t(word(w + 1))) << (32 - shift);
  return uint32_t(v) & ((1u << bits) - 1u);
}

// Sets value i of the stream in words[0], words[stride], words[2*stride], ... (zeroed before).
inline void stream_put(uint32_t* words, int64_t stride, int64_t i, int bits, uint32_t value) {
  const int64_t bit = int64_t(bits) * i, w = bit / 32;
  const int shift = int(bit % 32);
  words[w * stride] |= value << shift;
  if (shift + bits > 32) words[(w + 1) * stride] |= value >> (32 - shift);
}

// A CPU, contiguous copy of t as int64 values, after checking dtype and shape.
std::vector<int64_t> int_values(const Tensor& t, const std::string& tensor_name,
                                const Shape& shape) {
  ORIGAMI_CHECK(t.defined(), tensor_name, ": missing");
  ORIGAMI_CHECK(t.dtype() == DType::i32 || t.dtype() == DType::i64, tensor_name,
                ": expected int32, got ", dtype_name(t.dtype()));
  ORIGAMI_CHECK(t.shape() == shape, tensor_name, ": expected shape ", shape_str(shape), ", got ",
                shape_str(t.shape()));
  const Tensor c = t.to(Device::cpu()).contiguous();
  std::vector<int64_t> v(size_t(c.numel()));
  if (c.dtype() == DType::i32) {
    const int32_t* p = c.data_as<int32_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = p[i];
  } else {
    const int64_t* p = c.data_as<int64_t>();
    std::copy(p, p + v.size(), v.begin());
  }
  return v;
}

}  // namespace

bool gptq_packable_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

int64_t gptq_pack_multiple(int bits) {
  return bits == 3 ? 32 : 32 / bits;
}

GptqTensors pack_gptq(const QuantizedLinear& lin, bool v2) {
  check_pack_bits(lin.bits, "pack_gptq");
  const int bits = lin.bits;
  const int64_t unit = gptq_pack_multiple(bits), in = lin.cols, out = lin.rows;
  const int64_t groups = lin.groups();
  const uint32_t mask = (1u << bits) - 1u;
  ORIGAMI_CHECK(in % unit == 0, "pack_gptq: in_features ", in, " must be a multiple of ", unit,
                " for ", bits, "-bit qweight");
  ORIGAMI_CHECK(out % unit == 0, "pack_gptq: out_features ", out, " must be a multiple of ", unit,
                " for ", bits, "-bit qzeros");
  ORIGAMI_CHECK(int64_t(lin.q.size()) == in * out && int64_t(lin.g_idx.size()) == in &&
                    int64_t(lin.zeros.size()) == groups * out &&
                    int64_t(lin.scales.size()) == groups * out,
                "pack_gptq: inconsistent QuantizedLinear sizes");
  GptqTensors t;
  const int64_t zero_words = out * bits / 32;
  t.qweight = Tensor::zeros({in * bits / 32, out}, DType::i32);
  t.qzeros = Tensor::zeros({groups, zero_words}, DType::i32);
  t.scales = Tensor::empty({groups, out}, DType::f16);
  t.g_idx = Tensor::empty({in}, DType::i32);
  // qweight: the stream of output o runs down column o (words `out` apart).
  uint32_t* qw = t.qweight.data_as<uint32_t>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c) {
      const int32_t q = lin.q[size_t(o * in + c)];
      ORIGAMI_CHECK(q >= 0 && uint32_t(q) <= mask, "pack_gptq: level ", q, " at [", o, ",", c,
                    "] outside 0..", mask);
      stream_put(qw + o, out, c, bits, uint32_t(q));
    }
  // qzeros: the stream of group gi runs along row gi.
  uint32_t* qz = t.qzeros.data_as<uint32_t>();
  uint16_t* sc = t.scales.data_as<uint16_t>();
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t o = 0; o < out; ++o) {
      const int32_t z = lin.zeros[size_t(gi * out + o)];
      ORIGAMI_CHECK(z >= 0 && uint32_t(z) <= mask, "pack_gptq: zero point ", z, " of group ", gi,
                    " row ", o, " outside 0..", mask);
      const uint32_t stored = (v2 ? uint32_t(z) : uint32_t(z) - 1u) & mask;
      stream_put(qz + gi * zero_words, 1, o, bits, stored);
      sc[gi * out + o] = f32_to_f16(lin.scales[size_t(gi * out + o)]);
    }
  std::copy(lin.g_idx.begin(), lin.g_idx.end(), t.g_idx.data_as<int32_t>());
  return t;
}

QuantizedLinear unpack_gptq(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales,
                            const Tensor& g_idx, int bits, int64_t group_size, bool v2,
                            const std::string& name) {
  check_pack_bits(bits, "unpack_gptq " + name);
  const int64_t unit = gptq_pack_multiple(bits);
  const uint32_t mask = (1u << bits) - 1u;
  ORIGAMI_CHECK(qweight.defined() && qweight.dim() == 2, name, ".qweight: expected 2 dims [in*",
                bits, "/32, out], got ", qweight.defined() ? shape_str(qweight.shape()) : "none");
  ORIGAMI_CHECK(scales.defined() && scales.dim() == 2, name, ".scales: expected 2 dims [groups, ",
                "out], got ", scales.defined() ? shape_str(scales.shape()) : "none");
  ORIGAMI_CHECK(is_floating(scales.dtype()), name, ".scales: expected float16, got ",
                dtype_name(scales.dtype()));
  ORIGAMI_CHECK(qweight.size(0) * 32 % (unit * bits) == 0, name, ".qweight: ", qweight.size(0),
                " rows do not hold whole ", bits, "-bit units (", unit, " values in ",
                unit * bits / 32, " words)");
  const int64_t in = qweight.size(0) * 32 / bits, out = qweight.size(1), groups = scales.size(0);
  ORIGAMI_CHECK(scales.size(1) == out, name, ".scales: expected ", out, " columns (out of ", name,
                ".qweight), got ", shape_str(scales.shape()));
  ORIGAMI_CHECK(group_size == -1 || group_size > 0, name,
                ": group_size must be -1 or positive, got ", group_size);
  const int64_t expect_groups = group_size == -1 ? 1 : (in + group_size - 1) / group_size;
  ORIGAMI_CHECK(groups == expect_groups, name, ".scales: expected ", expect_groups,
                " groups (in_features ", in, ", group_size ", group_size, "), got ",
                shape_str(scales.shape()));
  ORIGAMI_CHECK(out % unit == 0, name, ".qzeros: out_features ", out, " is not a multiple of ",
                unit);
  const int64_t zero_words = out * bits / 32;
  const std::vector<int64_t> qw = int_values(qweight, name + ".qweight", qweight.shape());
  const std::vector<int64_t> qz = int_values(qzeros, name + ".qzeros", {groups, zero_words});

  QuantizedLinear lin;
  lin.rows = out;
  lin.cols = in;
  lin.bits = bits;
  lin.group_size = group_size;
  lin.q.resize(size_t(out * in));
  for (int64_t o = 0; o < out; ++o) {
    auto word = [&](int64_t w) { return qw[size_t(w * out + o)]; };
    for (int64_t c = 0; c < in; ++c) lin.q[size_t(o * in + c)] = int32_t(stream_get(word, c, bits));
  }
  lin.zeros.resize(size_t(groups * out));
  for (int64_t gi = 0; gi < groups; ++gi) {
    auto word = [&](int64_t w) { return qz[size_t(gi * zero_words + w)]; };
    for (int64_t o = 0; o < out; ++o) {
      const uint32_t stored = stream_get(word, o, bits);
      lin.zeros[size_t(gi * out + o)] = int32_t(v2 ? stored : (stored + 1u) & mask);
    }
  }
  lin.scales = scales.to_float_vector();
  lin.g_idx.resize(size_t(in));
  if (g_idx.defined()) {
    const std::vector<int64_t> gv = int_values(g_idx, name + ".g_idx", {in});
    for (int64_t c = 0; c < in; ++c) {
      ORIGAMI_CHECK(gv[size_t(c)] >= 0 && gv[size_t(c)] < groups, name, ".g_idx: entry ", c, " is ",
                    gv[size_t(c)], ", outside 0..", groups - 1);
      lin.g_idx[size_t(c)] = int32_t(gv[size_t(c)]);
    }
  } else {
    const int64_t g = group_size == -1 ? in : group_size;
    for (int64_t c = 0; c < in; ++c) lin.g_idx[size_t(c)] = int32_t(c / g);
  }
  return lin;
}

// ---- quantization_config
// -------------------------------------------------------------------------

GptqFormat gptq_format_from_config_text(const std::string& text, const std::string& label) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ORIGAMI_FAIL(label, ": not valid JSON: ", e.what());
  }
  ORIGAMI_CHECK(
      j.is_object() && j.contains("quantization_config") && j["quantization_config"].is_object(),
      label, ": no quantization_config object");
  const json& q = j["quantization_config"];
  const std::string where = label + ": quantization_config.";
  ORIGAMI_CHECK(q.contains("quant_method") && q["quant_method"].is_string() &&
                    q["quant_method"].get<std::string>() == "gptq",
                where, "quant_method: expected \"gptq\", got ",
                q.contains("quant_method") ? q["quant_method"].dump() : "none");
  auto integer = [&](const char* key) -> int64_t {
    ORIGAMI_CHECK(q.contains(key) && q[key].is_number_integer(), where, key,
                  ": expected an integer, got ", q.contains(key) ? q[key].dump() : "none");
    return q[key].get<int64_t>();
  };
  auto boolean = [&](const char* key, bool fallback) {
    if (!q.contains(key) || q[key].is_null()) return fallback;
    ORIGAMI_CHECK(q[key].is_boolean(), where, key, ": expected true or false, got ", q[key].dump());
    return q[key].get<bool>();
  };
  GptqFormat f;
  const int64_t bits = integer("bits");
  ORIGAMI_CHECK(bits >= 2 && bits <= 8, where, "bits: expected 2..8, got ", bits);
  f.bits = int(bits);
  f.group_size = integer("group_size");
  ORIGAMI_CHECK(f.group_size == -1 || f.group_size > 0, where,
                "group_size: expected -1 or positive, got ", f.group_size);
  f.desc_act = boolean("desc_act", false);
  f.sym = boolean("sym", true);
  if (q.contains("checkpoint_format") && !q["checkpoint_format"].is_null()) {
    const json& cf = q["checkpoint_format"];
    const std::string v = cf.is_string() ? cf.get<std::string>() : cf.dump();
    ORIGAMI_CHECK(v == "gptq" || v == "gptq_v2", where,
                  "checkpoint_format: expected \"gptq\" or \"gptq_v2\", got ", cf.dump());
    f.v2 = v == "gptq_v2";
  }
  return f;
}

std::string gptq_quantization_config_json(const GptqFormat& f, double percdamp,
                                          bool true_sequential) {
  nlohmann::ordered_json q;
  q["quant_method"] = "gptq";
  q["bits"] = f.bits;
  q["group_size"] = f.group_size;
  q["desc_act"] = f.desc_act;
  q["sym"] = f.sym;
  q["damp_percent"] = percdamp;
  q["true_sequential"] = true_sequential;
  q["checkpoint_format"] = f.v2 ? "gptq_v2" : "gptq";
  return q.dump();
}

}  // namespace origami
