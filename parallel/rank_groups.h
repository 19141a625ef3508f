// Rank groups: which global ranks form each tensor-, context-, expert-, data- and
// pipeline-parallel group, for both factorizations of one world ("MoE parallel folding").
//
// A global rank is a mixed-radix number over an order string, leftmost name fastest. With the
// default order "tp-cp-ep-dp-pp":
//
//   rank = tp + TP*(cp + CP*(ep + EP*(dp + DP*pp)))
//
// The same world is read two ways:
//   dense  (attention layers): sizes TP, CP, DP, PP with EP = 1;   DP  = world / (TP*CP*PP)
//   expert (MoE layers):       sizes ETP, EP, EDP, PP with CP = 1; EDP = world / (ETP*EP*PP)
// where the order-string slots tp and dp hold ETP and EDP in the expert reading. The pipeline
// groups of both readings must be identical (a rank holds one pipeline stage for all its layers).
//
// The group of a set of names S holds the ranks that differ only in the coordinates of S; its
// members are listed with the coordinates of S varying in order-string order, first name fastest.
// A rank's position in its group matters: it decides, for example, which optimizer shard it owns.
//
// Group names (joined with '-', in any order; "tp-dp-cp" and "dp-cp-tp" are the same group):
//   dense:  tp, cp, dp, pp                      e.g. "dp-cp" (dense gradients), "tp-cp"
//   expert: etp, ep, edp, pp, and tp as the expert tensor-parallel slot when combined with ep
//           ("tp-ep": the ETP x EP group over which per-expert token counts are gathered)
//   "world": every rank.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace origami {

// The parallel sizes a run asks for. DP and EDP follow from the world size; ETP defaults to TP.
struct ParallelLayout {
  int tp = 1;   // tensor parallel (attention / dense layers)
  int cp = 1;   // context parallel
  int pp = 1;   // pipeline parallel (shared by both factorizations)
  int ep = 1;   // expert parallel
  int etp = 0;  // expert tensor parallel; 0: the same as tp
  int dp = 0;   // data parallel; 0: derived as world / (tp*cp*pp), otherwise checked against it
  std::string order = "tp-cp-ep-dp-pp";
};

class RankGroups {
 public:
  // Validates the layout against `world_size`; throws origami::Error naming the numbers when the
  // world does not factor, a size is < 1, the order string is malformed, or the pipeline groups of
  // the dense and expert factorizations differ.
  RankGroups(int world_size, const ParallelLayout& layout);

  int world_size() const { return world_size_; }
  int tp() const { return dense_.sizes[kTp]; }
  int cp() const { return dense_.sizes[kCp]; }
  int dp() const { return dense_.sizes[kDp]; }
  int pp() const { return dense_.sizes[kPp]; }
  int ep() const { return expert_.sizes[kEp]; }
  int etp() const { return expert_.sizes[kTp]; }
  int edp() const { return expert_.sizes[kDp]; }
  // The order string with every slot present, e.g. "tp-cp-ep-dp-pp".
  std::string order() const;

  // Every group of `names` (see the header comment), in group-index order; each group lists its
  // members by position.
  std::vector<std::vector<int>> groups(std::string_view names) const;
  // The group of `names` that contains `rank`, listed by position.
  std::vector<int> group_of(std::string_view names, int rank) const;
  // `rank`'s position inside its group of `names` (its rank in that communicator).
  int position_in_group(std::string_view names, int rank) const;
  // Which group of `names` holds `rank` (its index in groups(names)).
  int group_index(std::string_view names, int rank) const;
  // Number of groups of `names` and the size of each.
  int group_count(std::string_view names) const;
  int group_size(std::string_view names) const;
  // The coordinate of `rank` along one name ("tp", "cp", "dp", "pp", "ep", "etp", "edp").
  int coordinate(std::string_view name, int rank) const;

  // The groups origami creates a communicator for, in creation order:
  // world, tp, cp, dp, pp, dp-cp, tp-cp, tp-dp-cp, ep, etp, edp, tp-ep.
  static const std::vector<std::string>& standard_group_names();

  // A printable layout: the sizes, the order, and which ranks form each standard group (at most
  // `max_groups_shown` groups per name, then "... N more").
  std::string summary(int max_groups_shown = 8) const;

 private:
  // Order-string slots, in the canonical order of ParallelLayout::order's default.
  static constexpr int kTp = 0, kCp = 1, kEp = 2, kDp = 3, kPp = 4, kSlots = 5;

  // One factorization: the size of each slot and the slot order (fastest first).
  struct Factorization {
    int sizes[kSlots] = {1, 1, 1, 1, 1};
  };
  // A parsed group name: which factorization and which slots vary.
  struct Selection {
    const Factorization* factorization = nullptr;
    bool varies[kSlots] = {false, false, false, false, false};
  };

  Selection parse(std::string_view names) const;
  // Mixed-radix helpers over order_ (fastest first).
  std::vector<std::vector<int>> enumerate(const Selection& s) const;
  void coordinates(const Factorization& f, int rank, int out[kSlots]) const;

  int world_size_ = 1;
  int order_[kSlots] = {kTp, kCp, kEp, kDp, kPp};  // order_[i]: the slot at mixed-radix digit i
  Factorization dense_;
  Factorization expert_;
};

}  // namespace origami
