// The decoder's calls to a LinearObserver (models/linear_observer.h): which linears of a layer
// read the tensor at each site. The forward calls these only when an observer is set.
#include "models/decoder.h"
#include "models/linear_observer.h"

namespace origami::models {

void Decoder::observe(int64_t l, LinearSite site, const Tensor& x) {
  if (recomputing_) return;  // backward re-runs the forward: seen once already
  const LayerParamNames& n = layout_.names().layers[size_t(l)];
  switch (site) {
    case LinearSite::qkv:
      observer_->observe({n.q, n.k, n.v}, -1, x);
      break;
    case LinearSite::o:
      observer_->observe({n.o}, -1, x);
      break;
    case LinearSite::gate_up:
      observer_->observe({n.mlp_gate, n.mlp_up}, -1, x);
      break;
    case LinearSite::down:
      observer_->observe({n.mlp_down}, -1, x);
      break;
    case LinearSite::shared_gate_up:
      observer_->observe({n.shared_gate, n.shared_up}, -1, x);
      break;
    case LinearSite::shared_down:
      observer_->observe({n.shared_down}, -1, x);
      break;
    case LinearSite::expert_gate_up:
    case LinearSite::expert_down:
      break;  // observe_experts
  }
}

void Decoder::observe_experts(int64_t l, LinearSite site, std::span<const int64_t> rows,
                              const Tensor& x) {
  if (recomputing_) return;
  const LayerParamNames& n = layout_.names().layers[size_t(l)];
  const std::vector<std::string> names = site == LinearSite::expert_gate_up
                                             ? std::vector<std::string>{n.expert_gate, n.expert_up}
                                             : std::vector<std::string>{n.expert_down};
  int64_t start = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    if (rows[e] > 0) observer_->observe(names, int64_t(e), x.narrow(0, start, rows[e]));
    start += rows[e];
  }
}

}  // namespace origami::models
