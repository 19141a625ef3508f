// ProcessGroups: this rank's communicators, one per group of RankGroups, handed to layers
// explicitly (no global state). Which group reduces what (docs/design-facts.md, 'Which group
// reduces what'):
//   dense gradients over dp_cp; expert gradients over edp; router aux-loss statistics over tp_cp;
//   expert-bias token counts over tp_dp_cp; gradient norm over world; token all-to-all over ep;
//   expert tensor-parallel all-gather / reduce-scatter over etp; per-expert token counts
//   all-gathered over tp_ep.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/rank_groups.h"

namespace origami {

struct ProcessGroupsOptions {
  Milliseconds timeout = kDefaultCommTimeout;
  // A CUDA device: every group also gets an NCCL communicator for tensors on it (CPU tensors
  // still go through MPI). The CPU: MPI only.
  Device device = Device::cpu();
};

struct ProcessGroups {
  std::unique_ptr<Communicator> world, tp, cp, dp, pp, dp_cp, tp_cp, tp_dp_cp, ep, etp, edp, tp_ep;

  // Collective over `world` (every rank calls it): one split per group, in the order of
  // RankGroups::standard_group_names(). Each communicator's members, in rank order, are exactly
  // the rank's group in `layout` (checked).
  static ProcessGroups create(Communicator& world, const RankGroups& layout,
                              const ProcessGroupsOptions& options = {});

  // The communicator of a group name of RankGroups::standard_group_names() ("dp-cp" -> dp_cp).
  Communicator& get(const std::string& name) const;

  // Applies a timeout to every communicator.
  void set_timeout(Milliseconds timeout);

  // Which ranks form each group (for rank 0 to print at start-up).
  std::string summary() const { return summary_; }

 private:
  std::string summary_;
};

}  // namespace origami
