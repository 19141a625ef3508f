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
  ORIGAMI_CHECK(bits == 2 || bits == 4 || bits == 8, what,
                ": GPTQ packing supports 2, 4 and 8 bits, got ", bits,
                bits == 3 ? " (3-bit packing crosses int32 words and is not supported)" : "");
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

GptqTensors pack_gptq(const QuantizedLinear& lin, bool v2) {
  check_pack_bits(lin.bits, "pack_gptq");
  const int bits = lin.bits;
  const int64_t per = 32 / bits, in = lin.cols, out = lin.rows, groups = lin.groups();
  const uint32_t mask = (1u << bits) - 1u;
  ORIGAMI_CHECK(in % per == 0, "pack_gptq: in_features ", in, " must be a multiple of ", per,
                " for ", bits, "-bit qweight");
  ORIGAMI_CHECK(out % per == 0, "pack_gptq: out_features ", out, " must be a multiple of ", per,
                " for ", bits, "-bit qzeros");
  ORIGAMI_CHECK(int64_t(lin.q.size()) == in * out && int64_t(lin.g_idx.size()) == in &&
                    int64_t(lin.zeros.size()) == groups * out &&
                    int64_t(lin.scales.size()) == groups * out,
                "pack_gptq: inconsistent QuantizedLinear sizes");
  GptqTensors t;
  t.qweight = Tensor::zeros({in / per, out}, DType::i32);
  t.qzeros = Tensor::zeros({groups, out / per}, DType::i32);
  t.scales = Tensor::empty({groups, out}, DType::f16);
  t.g_idx = Tensor::empty({in}, DType::i32);
  uint32_t* qw = t.qweight.data_as<uint32_t>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c) {
      const int32_t q = lin.q[size_t(o * in + c)];
      ORIGAMI_CHECK(q >= 0 && uint32_t(q) <= mask, "pack_gptq: level ", q, " at [", o, ",", c,
                    "] outside 0..", mask);
      qw[(c / per) * out + o] |= uint32_t(q) << (bits * (c % per));
    }
  uint32_t* qz = t.qzeros.data_as<uint32_t>();
  uint16_t* sc = t.scales.data_as<uint16_t>();
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t o = 0; o < out; ++o) {
      const int32_t z = lin.zeros[size_t(gi * out + o)];
      ORIGAMI_CHECK(z >= 0 && uint32_t(z) <= mask, "pack_gptq: zero point ", z, " of group ", gi,
                    " row ", o, " outside 0..", mask);
      const uint32_t stored = (v2 ? uint32_t(z) : uint32_t(z) - 1u) & mask;
      qz[gi * (out / per) + o / per] |= stored << (bits * (o % per));
      sc[gi * out + o] = f32_to_f16(lin.scales[size_t(gi * out + o)]);
    }
  std::copy(lin.g_idx.begin(), lin.g_idx.end(), t.g_idx.data_as<int32_t>());
  return t;
}

QuantizedLinear unpack_gptq(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales,
                            const Tensor& g_idx, int bits, int64_t group_size, bool v2,
                            const std::string& name) {
  check_pack_bits(bits, "unpack_gptq " + name);
  const int64_t per = 32 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  ORIGAMI_CHECK(qweight.defined() && qweight.dim() == 2, name, ".qweight: expected 2 dims [in*",
                bits, "/32, out], got ", qweight.defined() ? shape_str(qweight.shape()) : "none");
  ORIGAMI_CHECK(scales.defined() && scales.dim() == 2, name, ".scales: expected 2 dims [groups, ",
                "out], got ", scales.defined() ? shape_str(scales.shape()) : "none");
  ORIGAMI_CHECK(is_floating(scales.dtype()), name, ".scales: expected float16, got ",
                dtype_name(scales.dtype()));
  const int64_t in = qweight.size(0) * per, out = qweight.size(1), groups = scales.size(0);
  ORIGAMI_CHECK(scales.size(1) == out, name, ".scales: expected ", out, " columns (out of ", name,
                ".qweight), got ", shape_str(scales.shape()));
  ORIGAMI_CHECK(group_size == -1 || group_size > 0, name,
                ": group_size must be -1 or positive, got ", group_size);
  const int64_t expect_groups = group_size == -1 ? 1 : (in + group_size - 1) / group_size;
  ORIGAMI_CHECK(groups == expect_groups, name, ".scales: expected ", expect_groups,
                " groups (in_features ", in, ", group_size ", group_size, "), got ",
                shape_str(scales.shape()));
  ORIGAMI_CHECK(out % per == 0, name, ".qzeros: out_features ", out, " is not a multiple of ", per);
  const std::vector<int64_t> qw = int_values(qweight, name + ".qweight", qweight.shape());
  const std::vector<int64_t> qz = int_values(qzeros, name + ".qzeros", {groups, out / per});

  QuantizedLinear lin;
  lin.rows = out;
  lin.cols = in;
  lin.bits = bits;
  lin.group_size = group_size;
  lin.q.resize(size_t(out * in));
  for (int64_t c = 0; c < in; ++c)
    for (int64_t o = 0; o < out; ++o) {
      const uint32_t word = uint32_t(qw[size_t((c / per) * out + o)]);
      lin.q[size_t(o * in + c)] = int32_t((word >> (bits * (c % per))) & mask);
    }
  lin.zeros.resize(size_t(groups * out));
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t o = 0; o < out; ++o) {
      const uint32_t word = uint32_t(qz[size_t(gi * (out / per) + o / per)]);
      const uint32_t stored = (word >> (bits * (o % per))) & mask;
      lin.zeros[size_t(gi * out + o)] = int32_t(v2 ? stored : (stored + 1u) & mask);
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

std::string gptq_quantization_config_json(const GptqFormat& f, double percdamp) {
  nlohmann::ordered_json q;
  q["quant_method"] = "gptq";
  q["bits"] = f.bits;
  q["group_size"] = f.group_size;
  q["desc_act"] = f.desc_act;
  q["sym"] = f.sym;
  q["damp_percent"] = percdamp;
  q["true_sequential"] = true;
  q["checkpoint_format"] = f.v2 ? "gptq_v2" : "gptq";
  return q.dump();
}

}  // namespace origami
