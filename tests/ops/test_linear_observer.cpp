// The decoder's calibration hook (models/linear_observer.h), on a Qwen2-MoE-style model with a
// dense first layer, q/k/v biases, routed experts and a gated shared expert: one inference step
// hands the observer every linear that origami quantize quantizes (models::quantization_targets),
// each with its input width and the step's rows (experts: the rows routed to each, k per token in
// all); the dense MLP's down input is silu(x Wg^T) * (x Wu^T) of its gate/up input; the router and
// the shared-expert gate are never observed; with the observer unset nothing is seen.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "models/generator.h"
#include "models/linear_observer.h"
#include "models/quantize.h"
#include "runtime/config.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

struct Call {
  std::vector<std::string> names;
  int64_t expert;
  int64_t rows, cols;
  std::vector<float> x;
};

class Recorder final : public models::LinearObserver {
 public:
  void observe(const std::vector<std::string>& names, int64_t expert, const Tensor& x) override {
    calls.push_back({names, expert, x.size(0), x.size(1), x.to_float_vector()});
  }
  std::vector<Call> calls;
};

models::ModelSpec observer_spec() {
  const std::string text =
      "model { family: \"qwen2_moe\" vocab_size: 37 hidden_size: 24 num_heads: 3 "
      "num_kv_heads: 1 ffn_hidden_size: 20 max_seq_len: 32 num_layers: 2 moe { num_experts: 4 "
      "top_k: 2 expert_ffn_hidden_size: 10 shared_expert_ffn_hidden_size: 14 sparse_step: 1 "
      "mlp_only_layers: [0] } }";
  models::ModelSpec s = models::spec_from_config(parse_config(text, "observer").model());
  s.qkv_bias = true;
  return s;
}

TEST(LinearObserver, SeesEveryQuantizedLinearOnce) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const models::ModelSpec spec = observer_spec();
  const models::ParameterLayout layout(spec);
  models::ParameterBuffer params(layout, DType::f32);
  params.init_random(5, 0.3);
  models::GeneratorOptions go;
  go.max_batch = 2;
  go.device = test::test_device();
  models::Generator gen(spec, params, go);
  Recorder rec;
  gen.set_linear_observer(&rec);
  const std::vector<int64_t> a = {3, 1, 4, 1, 5}, b = {9, 2, 6};
  const std::vector<models::SequenceChunk> chunks = {{0, a}, {1, b}};
  gen.step(chunks);
  const int64_t T = int64_t(a.size() + b.size()), k = spec.moe.top_k;

  // (name, expert) -> rows seen; each call's width matches the weight's input width.
  std::map<std::pair<std::string, int64_t>, int64_t> seen;
  for (const Call& c : rec.calls) {
    ASSERT_FALSE(c.names.empty());
    for (const std::string& n : c.names) {
      const models::ParamEntry& e = layout.entry(n);
      EXPECT_EQ(c.cols, e.shape.back()) << n;
      EXPECT_EQ(e.is_expert(), c.expert >= 0) << n;
      if (e.is_expert()) {
        EXPECT_LT(c.expert, e.experts) << n;
      }
      EXPECT_EQ(seen.count({n, c.expert}), 0u) << n << " expert " << c.expert << " seen twice";
      seen[{n, c.expert}] += c.rows;
      EXPECT_EQ(n.find("shared_expert_gate"), std::string::npos) << "the gate is not quantized";
      EXPECT_EQ(n.find(".mlp.gate.weight"), std::string::npos) << "the router is not quantized";
    }
  }
  for (int64_t l = 0; l < spec.layers; ++l) {
    std::map<std::string, int64_t> expert_rows;
    for (const models::QuantTarget& t : models::quantization_targets(layout, l)) {
      auto it = seen.find({t.param, t.expert});
      if (t.expert < 0) {
        ASSERT_NE(it, seen.end()) << t.name << " not observed";
        EXPECT_EQ(it->second, T) << t.name;
      } else if (it != seen.end()) {
        expert_rows[t.param] += it->second;
      }
      if (it != seen.end()) seen.erase(it);
    }
    for (const auto& [param, rows] : expert_rows) EXPECT_EQ(rows, T * k) << param;
    if (spec.is_moe_layer(l)) {
      EXPECT_EQ(expert_rows.size(), 3u) << "layer " << l;
    }
  }
  EXPECT_TRUE(seen.empty()) << seen.size() << " observed linears are not quantization targets";

  // Layer 0's dense MLP: down's input is silu(x Wg^T) * (x Wu^T) of the gate/up input x.
  const models::LayerParamNames& n0 = layout.names().layers[0];
  const Call *gate_up = nullptr, *down = nullptr;
  for (const Call& c : rec.calls) {
    if (c.names[0] == n0.mlp_gate) gate_up = &c;
    if (c.names[0] == n0.mlp_down) down = &c;
  }
  ASSERT_TRUE(gate_up && down);
  const std::vector<float> wg = params.get(n0.mlp_gate).to_float_vector();
  const std::vector<float> wu = params.get(n0.mlp_up).to_float_vector();
  const int64_t H = gate_up->cols, F = down->cols;
  double worst = 0.0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < F; ++f) {
      double g = 0.0, u = 0.0;
      for (int64_t h = 0; h < H; ++h) {
        g += double(gate_up->x[size_t(t * H + h)]) * wg[size_t(f * H + h)];
        u += double(gate_up->x[size_t(t * H + h)]) * wu[size_t(f * H + h)];
      }
      const double want = g / (1.0 + std::exp(-g)) * u;
      worst =
          std::max(worst, std::fabs(want - down->x[size_t(t * F + f)]) / (1.0 + std::fabs(want)));
    }
  EXPECT_LT(worst, 1e-4) << "the down input is not silu(gate) * up of the observed input";

  // Off: nothing observed.
  rec.calls.clear();
  gen.set_linear_observer(nullptr);
  gen.reset();
  gen.step(chunks);
  EXPECT_TRUE(rec.calls.empty());
}

}  // namespace
}  // namespace origami
