// Rank groups: the worked examples of docs/design-facts.md, 'Rank groups', verbatim, then many
// layouts against a brute-force enumeration written here independently (decode every rank into
// coordinates, bucket ranks by the coordinates outside the group), then the validation errors.
#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/rank_groups.h"
#include "runtime/error.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using Groups = std::vector<std::vector<int>>;

ParallelLayout layout(int tp, int cp, int pp, int ep, int etp = 0,
                      std::string order = "tp-cp-ep-dp-pp") {
  ParallelLayout l;
  l.tp = tp;
  l.cp = cp;
  l.pp = pp;
  l.ep = ep;
  l.etp = etp;
  l.order = std::move(order);
  return l;
}

// Expects `fn` to throw origami::Error whose message contains every piece of `pieces`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an origami::Error containing '" << pieces[0] << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& p : pieces) EXPECT_NE(what.find(p), std::string::npos) << what;
  }
}

// ---- the worked examples ---------------------------------------------------------------------

TEST(RankGroups, WorkedExampleEp4) {
  // world 8, dense TP2 CP2 DP2, expert ETP1 EP4 EDP2
  RankGroups g(8, layout(2, 2, 1, 4, 1));
  EXPECT_EQ(g.dp(), 2);
  EXPECT_EQ(g.edp(), 2);
  EXPECT_EQ(g.groups("tp"), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(g.groups("cp"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(g.groups("dp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(g.groups("dp-cp"), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(g.groups("ep"), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(g.groups("edp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // The order of names in a group's name does not matter.
  EXPECT_EQ(g.groups("cp-dp"), g.groups("dp-cp"));
}

TEST(RankGroups, WorkedExampleEtp2Ep2) {
  RankGroups g(8, layout(2, 2, 1, 2, 2));
  EXPECT_EQ(g.groups("etp"), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(g.groups("ep"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(g.groups("edp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // ETP defaults to TP.
  RankGroups d(8, layout(2, 2, 1, 2));
  EXPECT_EQ(d.etp(), 2);
  EXPECT_EQ(d.groups("etp"), g.groups("etp"));
}

TEST(RankGroups, WorkedExampleWorld16Pp2) {
  RankGroups g(16, layout(2, 2, 2, 4, 1));
  Groups pp;
  for (int i = 0; i < 8; ++i) pp.push_back({i, i + 8});
  EXPECT_EQ(g.groups("pp"), pp);
  // The first pipeline stage is the world-8 example.
  EXPECT_EQ(g.group_of("dp-cp", 5), (std::vector<int>{1, 3, 5, 7}));
  EXPECT_EQ(g.group_of("dp-cp", 13), (std::vector<int>{9, 11, 13, 15}));
}

TEST(RankGroups, PositionAndIndex) {
  RankGroups g(8, layout(2, 2, 1, 4, 1));
  EXPECT_EQ(g.position_in_group("dp-cp", 6), 3);
  EXPECT_EQ(g.group_index("dp-cp", 6), 0);
  EXPECT_EQ(g.position_in_group("ep", 6), 2);
  EXPECT_EQ(g.group_index("ep", 6), 1);
  EXPECT_EQ(g.coordinate("tp", 5), 1);
  EXPECT_EQ(g.coordinate("cp", 5), 0);
  EXPECT_EQ(g.coordinate("dp", 5), 1);
  EXPECT_EQ(g.coordinate("ep", 5), 1);
  EXPECT_EQ(g.coordinate("edp", 5), 1);
  EXPECT_EQ(g.groups("world"), (Groups{{0, 1, 2, 3, 4, 5, 6, 7}}));
  EXPECT_EQ(g.group_count("tp"), 4);
  EXPECT_EQ(g.group_size("tp-cp"), 4);
  const std::string s = g.summary();
  EXPECT_NE(s.find("dp-cp"), std::string::npos) << s;
  EXPECT_NE(s.find("[0,2,4,6]"), std::string::npos) << s;
}

// ---- brute force
// ---------------------------------------------------------------------------------

// One reading of the world: the size of each generic name (tp, cp, ep, dp, pp) and the order.
struct Reading {
  std::map<std::string, int> size;
  std::vector<std::string> order;
};

std::vector<std::string> split_dash(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, '-')) out.push_back(item);
  return out;
}

// Decodes `rank` into one coordinate per name: digit k of the mixed-radix number over `order`.
std::map<std::string, int> decode(const Reading& r, int rank) {
  std::map<std::string, int> c;
  for (const std::string& name : r.order) {
    const int s = r.size.at(name);
    c[name] = rank % s;
    rank /= s;
  }
  return c;
}

// The groups of the generic names `varying`: bucket ranks by the coordinates outside `varying`;
// bucket index and position are mixed-radix values (first name of the order fastest).
Groups brute_groups(int world, const Reading& r, const std::set<std::string>& varying) {
  std::map<int, std::map<int, int>> buckets;  // group index -> position -> rank
  for (int rank = 0; rank < world; ++rank) {
    const auto c = decode(r, rank);
    int index = 0, index_mul = 1, pos = 0, pos_mul = 1;
    for (const std::string& name : r.order) {
      const int s = r.size.at(name);
      if (varying.count(name)) {
        pos += c.at(name) * pos_mul;
        pos_mul *= s;
      } else {
        index += c.at(name) * index_mul;
        index_mul *= s;
      }
    }
    EXPECT_EQ(buckets[index].count(pos), 0u);
    buckets[index][pos] = rank;
  }
  Groups out;
  for (auto& [index, members] : buckets) {
    EXPECT_EQ(index, int(out.size()));
    std::vector<int> g;
    for (auto& [pos, rank] : members) {
      EXPECT_EQ(pos, int(g.size()));
      g.push_back(rank);
    }
    out.push_back(g);
  }
  return out;
}

struct Case {
  int world, tp, cp, pp, ep, etp;
  std::string order;
};

std::string case_str(const Case& c) {
  std::ostringstream os;
  os << "world " << c.world << " tp " << c.tp << " cp " << c.cp << " pp " << c.pp << " ep " << c.ep
     << " etp " << c.etp << " order " << c.order;
  return os.str();
}

// Group names -> (expert reading?, generic names that vary).
struct NameSpec {
  std::string name;
  bool expert;
  std::set<std::string> varying;
};
const std::vector<NameSpec>& name_specs() {
  static const std::vector<NameSpec> specs = {
      {"tp", false, {"tp"}},
      {"cp", false, {"cp"}},
      {"dp", false, {"dp"}},
      {"pp", false, {"pp"}},
      {"dp-cp", false, {"dp", "cp"}},
      {"tp-cp", false, {"tp", "cp"}},
      {"tp-dp-cp", false, {"tp", "dp", "cp"}},
      {"tp-pp", false, {"tp", "pp"}},
      {"cp-dp-pp", false, {"cp", "dp", "pp"}},
      {"ep", true, {"ep"}},
      {"etp", true, {"tp"}},
      {"edp", true, {"dp"}},
      {"tp-ep", true, {"tp", "ep"}},
      {"ep-edp", true, {"ep", "dp"}},
      {"ep-pp", true, {"ep", "pp"}},
      {"world", false, {"tp", "cp", "ep", "dp", "pp"}},
  };
  return specs;
}

TEST(RankGroups, MatchesBruteForceOnManyLayouts) {
  const std::vector<std::string> orders = {
      "tp-cp-ep-dp-pp", "tp-cp-ep-pp-dp", "pp-dp-ep-cp-tp", "dp-tp-cp-ep-pp",
      "ep-tp-cp-dp-pp", "cp-tp-dp-ep-pp", "tp-pp-dp-cp-ep", "tp-dp-pp",
  };
  const std::vector<int> worlds = {1, 2, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024};
  // A deterministic walk over sizes: divisors of the world picked by a small LCG.
  uint64_t state = 12345;
  const auto pick = [&](int n) {
    std::vector<int> divisors;
    for (int d = 1; d <= n; ++d)
      if (n % d == 0 && d <= 16) divisors.push_back(d);
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return divisors[(state >> 33) % divisors.size()];
  };
  std::vector<Case> cases;
  for (int world : worlds) {
    for (size_t k = 0; k < 4; ++k) {
      Case c;
      c.world = world;
      c.order = orders[(cases.size() + k / 2) % orders.size()];
      c.pp = pick(world);
      c.tp = pick(world / c.pp);
      c.cp = pick(world / (c.pp * c.tp));
      c.ep = pick(world / c.pp);
      c.etp = pick(world / (c.pp * c.ep));
      if (c.order == "tp-dp-pp") c.cp = c.ep = 1, c.etp = c.tp;  // order without cp and ep
      cases.push_back(c);
    }
  }
  // The worked example's fold with pp inside the order (EDP == DP).
  cases.push_back({16, 2, 2, 2, 4, 1, "tp-cp-ep-pp-dp"});
  cases.push_back({1024, 4, 2, 8, 8, 1, "tp-cp-ep-dp-pp"});
  cases.push_back({1024, 8, 4, 4, 16, 2, "tp-cp-ep-dp-pp"});
  cases.push_back({16, 2, 1, 2, 4, 1, "tp-cp-ep-pp-dp"});  // EDP 2 != DP 4: refused

  int valid = 0, rejected = 0;
  std::set<std::string> valid_orders;
  for (const Case& c : cases) {
    SCOPED_TRACE(case_str(c));
    const int etp = c.etp;
    const bool divisible =
        c.world % (c.tp * c.cp * c.pp) == 0 && c.world % (etp * c.ep * c.pp) == 0;
    if (!divisible) continue;  // never generated: sizes are divisors
    const int dp = c.world / (c.tp * c.cp * c.pp), edp = c.world / (etp * c.ep * c.pp);
    std::vector<std::string> order = split_dash(c.order);
    for (const char* n : {"tp", "cp", "ep", "dp", "pp"})
      if (std::find(order.begin(), order.end(), n) == order.end()) order.push_back(n);
    Reading dense{{{"tp", c.tp}, {"cp", c.cp}, {"ep", 1}, {"dp", dp}, {"pp", c.pp}}, order};
    Reading expert{{{"tp", etp}, {"cp", 1}, {"ep", c.ep}, {"dp", edp}, {"pp", c.pp}}, order};
    // Validity, decided here: pp groups of both readings equal as sets, and EDP == DP when pp is
    // not last and PP > 1.
    Groups dpp = brute_groups(c.world, dense, {"pp"}), epp = brute_groups(c.world, expert, {"pp"});
    std::sort(dpp.begin(), dpp.end());
    std::sort(epp.begin(), epp.end());
    const bool ok = dpp == epp && (order.back() == "pp" || c.pp == 1 || dp == edp);
    if (!ok) {
      ++rejected;
      EXPECT_THROW(RankGroups(c.world, layout(c.tp, c.cp, c.pp, c.ep, c.etp, c.order)), Error);
      continue;
    }
    ++valid;
    valid_orders.insert(c.order);
    RankGroups g(c.world, layout(c.tp, c.cp, c.pp, c.ep, c.etp, c.order));
    EXPECT_EQ(g.dp(), dp);
    EXPECT_EQ(g.edp(), edp);
    for (const NameSpec& spec : name_specs()) {
      SCOPED_TRACE(spec.name);
      const Groups expected = brute_groups(c.world, spec.expert ? expert : dense, spec.varying);
      ASSERT_EQ(g.groups(spec.name), expected);
      for (int rank = 0; rank < c.world; rank += std::max(1, c.world / 64)) {
        const int index = g.group_index(spec.name, rank);
        const int pos = g.position_in_group(spec.name, rank);
        ASSERT_LT(index, int(expected.size()));
        ASSERT_LT(pos, int(expected[size_t(index)].size()));
        EXPECT_EQ(expected[size_t(index)][size_t(pos)], rank);
        EXPECT_EQ(g.group_of(spec.name, rank), expected[size_t(index)]);
      }
    }
    for (int rank = 0; rank < c.world; rank += std::max(1, c.world / 16)) {
      const auto dc = decode(dense, rank), ec = decode(expert, rank);
      EXPECT_EQ(g.coordinate("tp", rank), dc.at("tp"));
      EXPECT_EQ(g.coordinate("cp", rank), dc.at("cp"));
      EXPECT_EQ(g.coordinate("dp", rank), dc.at("dp"));
      EXPECT_EQ(g.coordinate("pp", rank), dc.at("pp"));
      EXPECT_EQ(g.coordinate("etp", rank), ec.at("tp"));
      EXPECT_EQ(g.coordinate("ep", rank), ec.at("ep"));
      EXPECT_EQ(g.coordinate("edp", rank), ec.at("dp"));
    }
  }
  EXPECT_GE(valid, 20);
  EXPECT_GE(valid_orders.size(), 6u) << valid << " valid, " << rejected << " rejected";
  EXPECT_GE(rejected, 1);  // some generated folds are invalid and must be refused
}

// ---- validation ------------------------------------------------------------------------------

TEST(RankGroups, RejectsWorldNotDivisible) {
  expect_error([] { RankGroups(12, layout(8, 1, 1, 1)); }, {"world size 12", "TP*CP*PP", "= 8"});
  expect_error([] { RankGroups(8, layout(2, 1, 1, 3)); }, {"world size 8", "ETP*EP*PP", "= 6"});
  expect_error([] { RankGroups(16, layout(2, 2, 2, 1, 3)); }, {"ETP*EP*PP", "3*1*2 = 6"});
}

TEST(RankGroups, RejectsSizesBelowOne) {
  expect_error([] { RankGroups(8, layout(0, 1, 1, 1)); }, {"tp", "got 0"});
  expect_error([] { RankGroups(8, layout(1, -2, 1, 1)); }, {"cp", "got -2"});
  expect_error([] { RankGroups(8, layout(1, 1, 1, 1, -1)); }, {"etp", "got -1"});
  expect_error([] { RankGroups(0, layout(1, 1, 1, 1)); }, {"world size", "got 0"});
}

TEST(RankGroups, RejectsExplicitDpThatDoesNotFit) {
  ParallelLayout l = layout(2, 1, 1, 1);
  l.dp = 3;
  expect_error([&] { RankGroups(8, l); }, {"DP = 3", "DP = 4"});
  l.dp = 4;
  EXPECT_EQ(RankGroups(8, l).dp(), 4);
}

TEST(RankGroups, RejectsBadOrders) {
  expect_error([] { RankGroups(8, layout(2, 2, 1, 1, 0, "tp-cp-xx-dp-pp")); },
               {"unknown name 'xx'", "tp-cp-xx-dp-pp"});
  expect_error([] { RankGroups(8, layout(2, 2, 1, 1, 0, "tp-tp-cp-dp-pp")); },
               {"'tp' appears twice"});
  expect_error([] { RankGroups(8, layout(2, 2, 1, 1, 0, "tp-dp-pp")); },
               {"lacks 'cp'", "size is 2"});
  // A missing name of size 1 is fine.
  EXPECT_EQ(RankGroups(8, layout(2, 1, 2, 1, 0, "tp-dp-pp")).order(), "tp-dp-pp-cp-ep");
}

TEST(RankGroups, RejectsEdpNotDpWhenPpIsNotLast) {
  // DP = 16/(2*1*2) = 4, EDP = 16/(1*4*2) = 2.
  expect_error([] { RankGroups(16, layout(2, 1, 2, 4, 1, "tp-cp-ep-pp-dp")); },
               {"does not end in pp", "EDP", "= 2", "DP", "= 4"});
  // With pp last the same sizes are fine.
  EXPECT_NO_THROW(RankGroups(16, layout(2, 1, 2, 4, 1, "tp-cp-ep-dp-pp")));
}

TEST(RankGroups, RejectsDifferentPipelineGroups) {
  // EDP == DP == 2, but pp follows tp (size 2 dense, 1 expert): pp groups [0,2] vs [0,1].
  expect_error([] { RankGroups(8, layout(2, 1, 2, 2, 1, "tp-pp-cp-ep-dp")); },
               {"pipeline groups", "TP=2", "ETP=1", "[0,2]", "[0,1]"});
}

TEST(RankGroups, RejectsBadGroupNames) {
  RankGroups g(8, layout(2, 2, 1, 4, 1));
  expect_error([&] { g.groups("tp-xx"); }, {"unknown name 'xx'", "tp-xx"});
  expect_error([&] { g.groups("dp-ep"); }, {"mixes dense names"});
  expect_error([&] { g.groups("tp-tp"); }, {"'tp' appears twice"});
  expect_error([&] { g.groups("tp-etp-ep"); }, {"twice"});
  expect_error([&] { g.groups(""); }, {"unknown name ''"});
  expect_error([&] { g.group_of("tp", 8); }, {"rank 8", "[0, 8)"});
  expect_error([&] { g.coordinate("xp", 0); }, {"unknown coordinate 'xp'"});
}

}  // namespace
}  // namespace origami
