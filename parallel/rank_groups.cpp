#include "parallel/rank_groups.h"

#include <algorithm>
#include <sstream>

#include "runtime/error.h"

namespace origami {
namespace {

constexpr const char* kSlotNames[] = {"tp", "cp", "ep", "dp", "pp"};

std::vector<std::string_view> split_names(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t dash = s.find('-', start);
    out.push_back(
        s.substr(start, dash == std::string_view::npos ? std::string_view::npos : dash - start));
    if (dash == std::string_view::npos) break;
    start = dash + 1;
  }
  return out;
}

std::string list_str(const std::vector<int>& v) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
  os << ']';
  return os.str();
}

}  // namespace

RankGroups::RankGroups(int world_size, const ParallelLayout& layout) : world_size_(world_size) {
  ORIGAMI_CHECK(world_size >= 1, "rank groups: world size must be >= 1, got ", world_size);
  const int etp = layout.etp == 0 ? layout.tp : layout.etp;
  struct Named {
    const char* name;
    int value;
  };
  for (const Named& n : {Named{"tp", layout.tp}, Named{"cp", layout.cp}, Named{"pp", layout.pp},
                         Named{"ep", layout.ep}, Named{"etp", etp}}) {
    ORIGAMI_CHECK(n.value >= 1, "rank groups: parallel size ", n.name, " must be >= 1, got ",
                  n.value);
  }
  ORIGAMI_CHECK(layout.dp >= 0, "rank groups: dp must be >= 1 (or 0 to derive it), got ",
                layout.dp);

  // Dense factorization: DP from the world.
  const int64_t model = int64_t(layout.tp) * layout.cp * layout.pp;
  ORIGAMI_CHECK(world_size % model == 0, "rank groups: world size ", world_size,
                " is not divisible by TP*CP*PP = ", layout.tp, "*", layout.cp, "*", layout.pp,
                " = ", model, " (dense layout)");
  const int dp = int(world_size / model);
  ORIGAMI_CHECK(layout.dp == 0 || layout.dp == dp, "rank groups: DP = ", layout.dp,
                " was requested but world size ", world_size, " / (TP*CP*PP = ", model,
                ") gives DP = ", dp);
  // Expert factorization: EDP from the world.
  const int64_t expert_model = int64_t(etp) * layout.ep * layout.pp;
  ORIGAMI_CHECK(world_size % expert_model == 0, "rank groups: world size ", world_size,
                " is not divisible by ETP*EP*PP = ", etp, "*", layout.ep, "*", layout.pp, " = ",
                expert_model, " (expert layout)");
  const int edp = int(world_size / expert_model);

  dense_.sizes[kTp] = layout.tp;
  dense_.sizes[kCp] = layout.cp;
  dense_.sizes[kEp] = 1;
  dense_.sizes[kDp] = dp;
  dense_.sizes[kPp] = layout.pp;
  expert_.sizes[kTp] = etp;
  expert_.sizes[kCp] = 1;
  expert_.sizes[kEp] = layout.ep;
  expert_.sizes[kDp] = edp;
  expert_.sizes[kPp] = layout.pp;

  // Order string: known slot names, no duplicates; a missing slot is allowed only when it has
  // size 1 in both factorizations, and then goes last.
  bool seen[kSlots] = {false, false, false, false, false};
  int n = 0;
  for (std::string_view name : split_names(layout.order)) {
    int slot = -1;
    for (int s = 0; s < kSlots; ++s)
      if (name == kSlotNames[s]) slot = s;
    ORIGAMI_CHECK(slot >= 0, "rank groups: unknown name '", name, "' in order '", layout.order,
                  "': use the names tp, cp, ep, dp, pp joined with '-'");
    ORIGAMI_CHECK(!seen[slot], "rank groups: name '", name, "' appears twice in order '",
                  layout.order, "'");
    seen[slot] = true;
    order_[n++] = slot;
  }
  for (int s = 0; s < kSlots; ++s) {
    if (seen[s]) continue;
    ORIGAMI_CHECK(dense_.sizes[s] == 1 && expert_.sizes[s] == 1, "rank groups: order '",
                  layout.order, "' lacks '", kSlotNames[s], "' but its size is ",
                  std::max(dense_.sizes[s], expert_.sizes[s]),
                  "; name every parallel dimension of size > 1 in the order");
    order_[n++] = s;
  }

  // Both factorizations must agree on the pipeline groups.
  if (order_[kSlots - 1] != kPp && layout.pp > 1) {
    ORIGAMI_CHECK(edp == dp, "rank groups: order '", order(),
                  "' does not end in pp and PP = ", layout.pp,
                  " > 1, so EDP must equal DP, but EDP = world/(ETP*EP*PP) = ", world_size, "/(",
                  etp, "*", layout.ep, "*", layout.pp, ") = ", edp,
                  " and DP = world/(TP*CP*PP) = ", world_size, "/(", layout.tp, "*", layout.cp, "*",
                  layout.pp, ") = ", dp, "; put pp last in the order or change the sizes");
  }
  Selection dense_pp, expert_pp;
  dense_pp.factorization = &dense_;
  dense_pp.varies[kPp] = true;
  expert_pp.factorization = &expert_;
  expert_pp.varies[kPp] = true;
  auto a = enumerate(dense_pp), b = enumerate(expert_pp);
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  for (size_t g = 0; g < a.size(); ++g) {
    ORIGAMI_CHECK(a[g] == b[g],
                  "rank groups: the pipeline groups of the dense layout (TP=", layout.tp,
                  " CP=", layout.cp, " DP=", dp, " PP=", layout.pp,
                  ") and of the expert layout (ETP=", etp, " EP=", layout.ep, " EDP=", edp,
                  " PP=", layout.pp, ") differ under order '", order(), "': dense has ",
                  list_str(a[g]), " where expert has ", list_str(b[g]), "; reorder or resize");
  }
}

std::string RankGroups::order() const {
  std::string s;
  for (int i = 0; i < kSlots; ++i) {
    if (i) s += '-';
    s += kSlotNames[order_[i]];
  }
  return s;
}

RankGroups::Selection RankGroups::parse(std::string_view names) const {
  Selection sel;
  if (names == "world") {
    sel.factorization = &dense_;
    for (bool& v : sel.varies) v = true;
    return sel;
  }
  bool dense_only = false, expert_only = false, has_tp = false;
  std::vector<std::string_view> parts = split_names(names);
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string_view p = parts[i];
    for (size_t j = 0; j < i; ++j)
      ORIGAMI_CHECK(parts[j] != p, "rank groups: name '", p, "' appears twice in group '", names,
                    "'");
    if (p == "cp" || p == "dp") {
      dense_only = true;
    } else if (p == "ep" || p == "etp" || p == "edp") {
      expert_only = true;
    } else if (p == "tp") {
      has_tp = true;
    } else if (p != "pp") {
      ORIGAMI_FAIL("rank groups: unknown name '", p, "' in group '", names,
                   "': known names are tp, cp, dp, pp, ep, etp, edp (joined with '-') and 'world'");
    }
  }
  ORIGAMI_CHECK(!(dense_only && expert_only), "rank groups: group '", names,
                "' mixes dense names (cp, dp) with expert names (ep, etp, edp); a group lives in "
                "one factorization");
  for (std::string_view p : parts) {
    ORIGAMI_CHECK(!(expert_only && has_tp && p == "etp"), "rank groups: group '", names,
                  "' names the expert tensor-parallel slot twice (tp and etp)");
  }
  sel.factorization = expert_only ? &expert_ : &dense_;
  for (std::string_view p : parts) {
    if (p == "tp" || p == "etp") sel.varies[kTp] = true;
    if (p == "cp") sel.varies[kCp] = true;
    if (p == "ep") sel.varies[kEp] = true;
    if (p == "dp" || p == "edp") sel.varies[kDp] = true;
    if (p == "pp") sel.varies[kPp] = true;
  }
  return sel;
}

// The generator of the reference: stride[i] is the product of the sizes before digit i; groups are
// numbered by the digits of the fixed (unselected) dimensions, members by the selected ones, first
// digit fastest in both.
std::vector<std::vector<int>> RankGroups::enumerate(const Selection& s) const {
  std::vector<int> m_size, m_stride, u_size, u_stride;
  int stride = 1;
  for (int i = 0; i < kSlots; ++i) {
    const int slot = order_[i];
    const int size = s.factorization->sizes[slot];
    (s.varies[slot] ? m_size : u_size).push_back(size);
    (s.varies[slot] ? m_stride : u_stride).push_back(stride);
    stride *= size;
  }
  int g_size = 1;
  for (int v : m_size) g_size *= v;
  const int n_groups = world_size_ / g_size;
  std::vector<std::vector<int>> out(static_cast<size_t>(n_groups),
                                    std::vector<int>(static_cast<size_t>(g_size)));
  for (int g = 0; g < n_groups; ++g) {
    int base = 0, rest = g;
    for (size_t k = 0; k < u_size.size(); ++k) {
      base += (rest % u_size[k]) * u_stride[k];
      rest /= u_size[k];
    }
    for (int r = 0; r < g_size; ++r) {
      int rank = base;
      rest = r;
      for (size_t k = 0; k < m_size.size(); ++k) {
        rank += (rest % m_size[k]) * m_stride[k];
        rest /= m_size[k];
      }
      out[size_t(g)][size_t(r)] = rank;
    }
  }
  return out;
}

void RankGroups::coordinates(const Factorization& f, int rank, int out[kSlots]) const {
  for (int i = 0; i < kSlots; ++i) {
    const int slot = order_[i];
    out[slot] = rank % f.sizes[slot];
    rank /= f.sizes[slot];
  }
}

std::vector<std::vector<int>> RankGroups::groups(std::string_view names) const {
  return enumerate(parse(names));
}

int RankGroups::group_size(std::string_view names) const {
  const Selection s = parse(names);
  int g = 1;
  for (int slot = 0; slot < kSlots; ++slot)
    if (s.varies[slot]) g *= s.factorization->sizes[slot];
  return g;
}

int RankGroups::group_count(std::string_view names) const {
  return world_size_ / group_size(names);
}

static void check_rank(int rank, int world_size) {
  ORIGAMI_CHECK(rank >= 0 && rank < world_size, "rank groups: rank ", rank,
                " is outside the world [0, ", world_size, ")");
}

int RankGroups::position_in_group(std::string_view names, int rank) const {
  check_rank(rank, world_size_);
  const Selection s = parse(names);
  int c[kSlots];
  coordinates(*s.factorization, rank, c);
  int pos = 0, mul = 1;
  for (int i = 0; i < kSlots; ++i) {
    const int slot = order_[i];
    if (!s.varies[slot]) continue;
    pos += c[slot] * mul;
    mul *= s.factorization->sizes[slot];
  }
  return pos;
}

int RankGroups::group_index(std::string_view names, int rank) const {
  check_rank(rank, world_size_);
  const Selection s = parse(names);
  int c[kSlots];
  coordinates(*s.factorization, rank, c);
  int index = 0, mul = 1;
  for (int i = 0; i < kSlots; ++i) {
    const int slot = order_[i];
    if (s.varies[slot]) continue;
    index += c[slot] * mul;
    mul *= s.factorization->sizes[slot];
  }
  return index;
}

std::vector<int> RankGroups::group_of(std::string_view names, int rank) const {
  check_rank(rank, world_size_);
  const Selection s = parse(names);
  int c[kSlots];
  coordinates(*s.factorization, rank, c);
  // Zero the selected coordinates to get the group's first member, then enumerate the selected
  // digits (first fastest).
  std::vector<int> m_size, m_stride;
  int stride = 1, base = 0;
  for (int i = 0; i < kSlots; ++i) {
    const int slot = order_[i];
    const int size = s.factorization->sizes[slot];
    if (s.varies[slot]) {
      m_size.push_back(size);
      m_stride.push_back(stride);
    } else {
      base += c[slot] * stride;
    }
    stride *= size;
  }
  int g_size = 1;
  for (int v : m_size) g_size *= v;
  std::vector<int> out(static_cast<size_t>(g_size));
  for (int r = 0; r < g_size; ++r) {
    int member = base, rest = r;
    for (size_t k = 0; k < m_size.size(); ++k) {
      member += (rest % m_size[k]) * m_stride[k];
      rest /= m_size[k];
    }
    out[size_t(r)] = member;
  }
  return out;
}

int RankGroups::coordinate(std::string_view name, int rank) const {
  check_rank(rank, world_size_);
  const Factorization* f = nullptr;
  int slot = -1;
  if (name == "tp") f = &dense_, slot = kTp;
  if (name == "cp") f = &dense_, slot = kCp;
  if (name == "dp") f = &dense_, slot = kDp;
  if (name == "pp") f = &dense_, slot = kPp;
  if (name == "etp") f = &expert_, slot = kTp;
  if (name == "ep") f = &expert_, slot = kEp;
  if (name == "edp") f = &expert_, slot = kDp;
  ORIGAMI_CHECK(f != nullptr, "rank groups: unknown coordinate '", name,
                "': use tp, cp, dp, pp, ep, etp or edp");
  int c[kSlots];
  coordinates(*f, rank, c);
  return c[slot];
}

const std::vector<std::string>& RankGroups::standard_group_names() {
  static const std::vector<std::string> names = {"world", "tp",       "cp", "dp",  "pp",  "dp-cp",
                                                 "tp-cp", "tp-dp-cp", "ep", "etp", "edp", "tp-ep"};
  return names;
}

std::string RankGroups::summary(int max_groups_shown) const {
  std::ostringstream os;
  os << "layout: world " << world_size_ << ", order " << order() << "\n"
     << "  dense:  TP=" << tp() << " CP=" << cp() << " DP=" << dp() << " PP=" << pp() << "\n"
     << "  expert: ETP=" << etp() << " EP=" << ep() << " EDP=" << edp() << " PP=" << pp() << "\n";
  for (const std::string& name : standard_group_names()) {
    if (name == "world") continue;
    const auto gs = groups(name);
    os << "  " << name << std::string(name.size() < 9 ? 9 - name.size() : 1, ' ') << gs.size()
       << " x " << gs[0].size() << ":";
    const size_t shown = std::min(gs.size(), size_t(std::max(max_groups_shown, 1)));
    for (size_t g = 0; g < shown; ++g) os << ' ' << list_str(gs[g]);
    if (shown < gs.size()) os << " ... " << gs.size() - shown << " more";
    os << "\n";
  }
  return os.str();
}

}  // namespace origami
