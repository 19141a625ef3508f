// ProcessGroups on 8 ranks for the worked examples of docs/design-facts.md, 'Rank groups': every
// communicator's members are the groups listed there, and an all_reduce over a group sums exactly
// its members.
#include <numeric>

#include "parallel/process_groups.h"
#include "tests/mpi/mpi_test.h"

namespace origami {
namespace {

using Groups = std::vector<std::vector<int>>;
using test::mpi_world;

// The group of `groups` holding `rank`.
std::vector<int> containing(const Groups& groups, int rank) {
  for (const auto& g : groups)
    for (int r : g)
      if (r == rank) return g;
  ADD_FAILURE() << "rank " << rank << " is in no group";
  return {};
}

// Checks one communicator against the expected groups: members, position, and sums over it.
void check_group(Communicator& c, const Groups& expected, const std::string& name) {
  SCOPED_TRACE(name);
  const int me = mpi_world().rank();
  const std::vector<int> members = containing(expected, me);
  EXPECT_EQ(c.name(), name);
  EXPECT_EQ(c.global_ranks(), members);
  ASSERT_EQ(c.size(), int(members.size()));
  EXPECT_EQ(members[size_t(c.rank())], me);
  // Sum of the global ranks over the group: exactly the members' sum.
  Tensor t = Tensor::from_vector_i64({me, 1}, {2});
  c.all_reduce(t);
  EXPECT_EQ(t.item_at(0), double(std::accumulate(members.begin(), members.end(), 0)));
  EXPECT_EQ(t.item_at(1), double(members.size()));
  // Gathering the global ranks lists the members in position order.
  Tensor g = Tensor::zeros({int64_t(members.size())}, DType::i64);
  c.all_gather(Tensor::from_vector_i64({me}, {1}), g);
  for (size_t i = 0; i < members.size(); ++i) EXPECT_EQ(g.item_at(int64_t(i)), members[i]);
}

ParallelLayout layout(int tp, int cp, int pp, int ep, int etp) {
  ParallelLayout l;
  l.tp = tp;
  l.cp = cp;
  l.pp = pp;
  l.ep = ep;
  l.etp = etp;
  return l;
}

const Groups kAll8 = {{0, 1, 2, 3, 4, 5, 6, 7}};

TEST(ProcessGroups, WorkedExampleEp4) {
  if (mpi_world().size() != 8) GTEST_SKIP() << "needs 8 ranks";
  const RankGroups layout8(8, layout(2, 2, 1, 4, 1));
  ProcessGroupsOptions options;
  options.timeout = std::chrono::seconds(20);
  ProcessGroups pg = ProcessGroups::create(mpi_world(), layout8, options);
  check_group(*pg.tp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, "tp");
  check_group(*pg.cp, {{0, 2}, {1, 3}, {4, 6}, {5, 7}}, "cp");
  check_group(*pg.dp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}}, "dp");
  check_group(*pg.dp_cp, {{0, 2, 4, 6}, {1, 3, 5, 7}}, "dp-cp");
  check_group(*pg.tp_cp, {{0, 1, 2, 3}, {4, 5, 6, 7}}, "tp-cp");
  check_group(*pg.tp_dp_cp, kAll8, "tp-dp-cp");
  check_group(*pg.ep, {{0, 1, 2, 3}, {4, 5, 6, 7}}, "ep");
  check_group(*pg.edp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}}, "edp");
  check_group(*pg.etp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}, "etp");
  check_group(*pg.tp_ep, {{0, 1, 2, 3}, {4, 5, 6, 7}}, "tp-ep");
  check_group(*pg.pp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}, "pp");
  check_group(*pg.world, kAll8, "world");
  EXPECT_EQ(&pg.get("dp-cp"), pg.dp_cp.get());
  EXPECT_NE(pg.summary().find("dp-cp"), std::string::npos);
  if (mpi_world().rank() == 0) std::printf("%s", pg.summary().c_str());
}

TEST(ProcessGroups, WorkedExampleEtp2Ep2) {
  if (mpi_world().size() != 8) GTEST_SKIP() << "needs 8 ranks";
  const RankGroups layout8(8, layout(2, 2, 1, 2, 2));
  ProcessGroups pg = ProcessGroups::create(mpi_world(), layout8);
  check_group(*pg.etp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, "etp");
  check_group(*pg.ep, {{0, 2}, {1, 3}, {4, 6}, {5, 7}}, "ep");
  check_group(*pg.edp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}}, "edp");
  check_group(*pg.tp_ep, {{0, 1, 2, 3}, {4, 5, 6, 7}}, "tp-ep");
  check_group(*pg.dp_cp, {{0, 2, 4, 6}, {1, 3, 5, 7}}, "dp-cp");
  EXPECT_EQ(pg.tp->timeout(), kDefaultCommTimeout);
  pg.set_timeout(std::chrono::seconds(7));
  EXPECT_EQ(pg.edp->timeout(), std::chrono::seconds(7));
}

TEST(ProcessGroups, PipelineStages) {
  if (mpi_world().size() != 8) GTEST_SKIP() << "needs 8 ranks";
  // TP2 PP2 (DP2), ETP1 EP2 (EDP2): the pipeline groups are [i, i+4].
  const RankGroups layout8(8, layout(2, 1, 2, 2, 1));
  ProcessGroups pg = ProcessGroups::create(mpi_world(), layout8);
  check_group(*pg.pp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}}, "pp");
  check_group(*pg.tp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, "tp");
  check_group(*pg.ep, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, "ep");
  check_group(*pg.edp, {{0, 2}, {1, 3}, {4, 6}, {5, 7}}, "edp");
  check_group(*pg.dp, {{0, 2}, {1, 3}, {4, 6}, {5, 7}}, "dp");
}

TEST(ProcessGroups, AnyWorldSize) {
  // On every world size: TP = largest of 2 or 1 dividing it; groups match the layout.
  const int p = mpi_world().size();
  const int tp = p % 2 == 0 ? 2 : 1;
  const RankGroups rg(p, layout(tp, 1, 1, p / tp, 1));
  ProcessGroups pg = ProcessGroups::create(mpi_world(), rg);
  for (const std::string& name : RankGroups::standard_group_names())
    check_group(pg.get(name), rg.groups(name), name);
}

TEST(ProcessGroups, WrongWorldSizeIsAnError) {
  const int p = mpi_world().size();
  const RankGroups rg(2 * p, layout(1, 1, 1, 1, 1));
  test::expect_error(
      [&] { ProcessGroups::create(mpi_world(), rg); },
      {"world communicator has " + std::to_string(p), "layout is for " + std::to_string(2 * p)});
}

}  // namespace
}  // namespace origami
