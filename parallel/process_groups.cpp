#include "parallel/process_groups.h"

#include "runtime/error.h"

namespace origami {
namespace {

std::unique_ptr<Communicator>* slot_of(ProcessGroups& g, const std::string& name) {
  if (name == "world") return &g.world;
  if (name == "tp") return &g.tp;
  if (name == "cp") return &g.cp;
  if (name == "dp") return &g.dp;
  if (name == "pp") return &g.pp;
  if (name == "dp-cp") return &g.dp_cp;
  if (name == "tp-cp") return &g.tp_cp;
  if (name == "tp-dp-cp") return &g.tp_dp_cp;
  if (name == "ep") return &g.ep;
  if (name == "etp") return &g.etp;
  if (name == "edp") return &g.edp;
  if (name == "tp-ep") return &g.tp_ep;
  return nullptr;
}

}  // namespace

ProcessGroups ProcessGroups::create(Communicator& world, const RankGroups& layout,
                                    const ProcessGroupsOptions& options) {
  ORIGAMI_CHECK(world.size() == layout.world_size(), "process groups: the world communicator has ",
                world.size(), " ranks but the layout is for ", layout.world_size());
  ORIGAMI_CHECK(options.device.is_cpu() || ORIGAMI_CUDA, "process groups: device ",
                options.device.str(), " requested but origami was built without CUDA");
  const int rank = world.rank();
  ProcessGroups g;
  for (const std::string& name : RankGroups::standard_group_names()) {
    // color: which group holds this rank; key: its position inside it.
    std::unique_ptr<Communicator> c =
        world.split(layout.group_index(name, rank), layout.position_in_group(name, rank), name);
    const std::vector<int> expected = layout.group_of(name, rank);
    ORIGAMI_CHECK(
        c->global_ranks() == expected && c->rank() == layout.position_in_group(name, rank),
        "process groups: communicator '", name, "' of rank ", rank,
        " does not match its layout group; the world communicator must list the ranks "
        "of MPI_COMM_WORLD in order");
    c->set_timeout(options.timeout);
    if (options.device.is_cuda()) c = nccl_communicator(std::move(c), options.device);
    *slot_of(g, name) = std::move(c);
  }
  g.summary_ = layout.summary();
  return g;
}

Communicator& ProcessGroups::get(const std::string& name) const {
  auto* self = const_cast<ProcessGroups*>(this);
  std::unique_ptr<Communicator>* slot = slot_of(*self, name);
  ORIGAMI_CHECK(slot && *slot, "process groups: no communicator named '", name,
                "'; known: world, tp, cp, dp, pp, dp-cp, tp-cp, tp-dp-cp, ep, etp, edp, tp-ep");
  return **slot;
}

void ProcessGroups::set_timeout(Milliseconds timeout) {
  for (const std::string& name : RankGroups::standard_group_names()) get(name).set_timeout(timeout);
}

}  // namespace origami
