// Per-rank memory of parameters, gradients and optimizer state under tensor parallelism (TP2)
// and the ZeRO-1 distributed optimizer (DP2), next to one rank holding the whole model, for the
// shipped dense demo model and a larger one. Run under MPI with 2 ranks:
//
//   mpirun --allow-run-as-root --oversubscribe -np 2 build/bin/bench_memory
//
// Figures are the bytes each rank actually allocated: its Decoder's arenas (parameters,
// gradients) and its DistributedOptimizer's Adam m and v. "ratio" is the single rank's bytes
// over this layout's bytes per rank; the goal is the parallel degree (2) for the sharded parts,
// within 5%.
#include <cstdio>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/parallel_model.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "parallel/world.h"

using namespace origami;

namespace {

struct Bytes {
  double params = 0, grads = 0, optim = 0;
};

models::ModelSpec spec_of(const std::string& name) {
  models::ModelSpec s;
  s.family = models::Family::llama;
  if (name == "demo dense") {  // configs/demo/tiny_dense.pbtxt
    s.vocab = 264, s.hidden = 128, s.layers = 4, s.heads = 4, s.kv_heads = 2, s.head_dim = 32;
    s.ffn = 352;
  } else {  // a ~60M-parameter Llama-style model
    s.vocab = 32000, s.hidden = 512, s.layers = 8, s.heads = 8, s.kv_heads = 8, s.head_dim = 64;
    s.ffn = 1536;
  }
  s.rope.head_dim = s.head_dim;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  std::unique_ptr<Communicator> world = mpi_world_communicator();
  if (world->size() != 2) {
    if (world->rank() == 0)
      std::fprintf(stderr, "bench_memory: run with 2 ranks (mpirun -np 2), got %d\n",
                   world->size());
    return 2;
  }
  const bool root = world->rank() == 0;
  if (root)
    std::printf("%-11s %-12s %12s %12s %12s %12s  %s\n", "model", "layout", "params MiB",
                "grads MiB", "adam MiB", "total MiB", "ratio vs 1 rank (params/grads/adam)");
  for (const std::string name : {"demo dense", "llama 60M"}) {
    const models::ModelSpec spec = spec_of(name);
    // One rank: the whole model, Adam state for every parameter.
    models::DecoderOptions o;
    o.batch = 1;
    o.seq = 16;
    const MemoryPlan one = models::Decoder::memory_plan(spec, o);
    Bytes single;
    single.params = double(one.arena_bytes("parameters"));
    single.grads = double(one.arena_bytes("gradients"));
    single.optim = double(one.arena_bytes("optimizer state"));
    struct Layout {
      const char* name;
      int tp, dp;
    };
    for (const Layout& l : {Layout{"TP2", 2, 1}, Layout{"DP2 ZeRO-1", 1, 2}}) {
      models::ParallelOptions po;
      po.layout.tp = l.tp;
      po.layout.dp = l.dp;
      po.zero = true;
      models::DecoderOptions od = o;
      const RankGroups layout(world->size(), po.layout);
      ProcessGroups groups = ProcessGroups::create(*world, layout);
      models::ParallelModel pm(spec, od, po, layout, groups, 1);
      Bytes b;
      for (int c = 0; c < pm.num_chunks(); ++c) {
        const MemoryPlan& plan = pm.chunk(c).plan();
        b.params += double(plan.arena_bytes("parameters"));
        b.grads += double(plan.arena_bytes("gradients"));
      }
      b.optim = double(pm.optimizer_state_elements()) * 2 * 4;  // m and v, f32
      // The largest rank's figures (ranks may differ by alignment and uneven pieces).
      Tensor t =
          Tensor::from_vector({float(b.params), float(b.grads), float(b.optim)}, {3}, DType::f32);
      world->all_reduce(t, ReduceOp::max);
      const std::vector<float> v = t.to_float_vector();
      const double mib = 1024.0 * 1024.0;
      if (root) {
        if (l.tp == 2)
          std::printf("%-11s %-12s %12.2f %12.2f %12.2f %12.2f\n", name.c_str(), "1 rank",
                      single.params / mib, single.grads / mib, single.optim / mib,
                      (single.params + single.grads + single.optim) / mib);
        std::printf("%-11s %-12s %12.2f %12.2f %12.2f %12.2f  %.3f / %.3f / %.3f\n", name.c_str(),
                    l.name, v[0] / mib, v[1] / mib, v[2] / mib, (v[0] + v[1] + v[2]) / mib,
                    single.params / v[0], single.grads / v[1], single.optim / v[2]);
      }
    }
  }
  return 0;
}
