// The two expert dispatchers. What they share -- the count table, the expert order, the moves
// between source and expert order -- is DispatcherBase; each variant adds its counts and the
// two movements between this rank's copies and the source order.
#include "parallel/expert_dispatcher.h"

#include <utility>

#include "ops/index.h"
#include "parallel/communicator.h"
#include "runtime/error.h"

namespace origami {
namespace {

// Element counts of rows of width w.
std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t w) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * w;
  return out;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

Tensor rows_of(const Tensor& t, int64_t n) {
  return t.narrow(0, 0, n);
}

class DispatcherBase : public ExpertDispatcher {
 public:
  DispatcherBase(const ExpertGroups& groups, int64_t num_experts, int64_t hidden,
                 const DispatchBuffers& buffers)
      : g_(groups),
        E_(num_experts),
        H_(hidden),
        ep_(groups.ep ? groups.ep->size() : 1),
        ep_rank_(groups.ep ? groups.ep->rank() : 0),
        etp_(groups.etp ? groups.etp->size() : 1),
        etp_rank_(groups.etp ? groups.etp->rank() : 0),
        El_(num_experts / ep_),
        e0_(int64_t(ep_rank_) * El_),
        buf_(buffers) {
    ORIGAMI_CHECK(g_.tp_ep && g_.tp_ep->size() == ep_ * etp_,
                  "expert dispatcher: needs the tp-ep group of ETP x EP = ", ep_ * etp_, " ranks");
    ORIGAMI_CHECK(E_ % ep_ == 0, "expert dispatcher: ", E_, " experts do not divide over ep=", ep_);
  }

  void dispatch(const Tensor& xg, const Tensor& pw, const Tensor& rows, DispatchState& st,
                Tensor& xe, Tensor& pe) final {
    // 1. Rows per expert of every member of tp-ep; from them every count of the exchange.
    g_.tp_ep->all_gather(rows, st.table);
    st.tokens = xg.size(0);
    blocks_.clear();
    count(st);  // send, recv, gathered, blocks_ (the source order)
    st.source_rows = sum(st.gathered);
    // 2. Source-order rows and their routing weights on this rank.
    Tensor sx = rows_of(buf_.src_x, st.source_rows), sp = rows_of(buf_.src_p, st.source_rows);
    to_sources(xg, pw, st, sx, sp);
    // 3. idx: the expert order of this rank's experts' rows.
    expert_order(st);
    // 4. xe = src_x[idx], pe = src_p[idx].
    const int64_t n = st.expert_rows, S = st.source_rows;
    if (n > 0) {
      Tensor id = rows_of(st.idx, n);
      id.copy_from(rows_of(buf_.idx_host, n));
      Tensor xn = rows_of(xe, n), pn = rows_of(pe, n).view({n, 1});
      ops::gather_rows(sx, id, xn);
      ops::gather_rows(sp.view({S, 1}), id, pn);
    }
  }

  void combine(const Tensor& ye, const DispatchState& st, Tensor& y) final {
    // Outputs back in source order (zero for rows of other ranks' experts), then to the sources:
    // the mirror of dispatch's step 2 (sums of the ETP slices' partial outputs).
    Tensor ys = rows_of(buf_.src_y, st.source_rows);
    ys.zero_();
    if (st.expert_rows > 0) ops::scatter_add_rows(ye, rows_of(st.idx, st.expert_rows), ys);
    from_sources(ys, Tensor(), st, y, nullptr);
  }

  void combine_backward(const Tensor& dy, const DispatchState& st, Tensor& dye) final {
    // Output gradients to the experts' ranks: the same movement as dispatch's step 2.
    Tensor dsrc = rows_of(buf_.src_y, st.source_rows);
    Tensor none;
    to_sources(dy, Tensor(), st, dsrc, none);
    if (st.expert_rows > 0) ops::gather_rows(dsrc, rows_of(st.idx, st.expert_rows), dye);
  }

  void dispatch_backward(const Tensor& dxe, const Tensor& dpe, const DispatchState& st, Tensor& dxg,
                         Tensor& dpw) final {
    // Input and routing-weight gradients in source order, then back to the sources, summing the
    // ETP slices' partial gradients: the mirror of combine.
    const int64_t n = st.expert_rows, S = st.source_rows;
    Tensor dxs = rows_of(buf_.src_x, S), dps = rows_of(buf_.src_p, S);
    dxs.zero_();
    dps.zero_();
    if (n > 0) {
      const Tensor id = rows_of(st.idx, n);
      ops::scatter_add_rows(dxe, id, dxs);
      Tensor dps2 = dps.view({S, 1});
      ops::scatter_add_rows(dpe.view({n, 1}), id, dps2);
    }
    from_sources(dxs, dps, st, dxg, &dpw);
  }

 protected:
  // Fills st.send, st.recv (all-to-all), st.gathered and the source order's blocks_ from
  // st.table.
  virtual void count(DispatchState& st) = 0;
  // x [N,H] (and p [N] f32, when defined) -> source order sx [S,H] (and sp [S]).
  virtual void to_sources(const Tensor& x, const Tensor& p, const DispatchState& st, Tensor& sx,
                          Tensor& sp) = 0;
  // Source order sx [S,H] (and sp [S], when defined) -> x [N,H] (and *p [N]), summed over the
  // ranks that computed parts of the same rows.
  virtual void from_sources(const Tensor& sx, const Tensor& sp, const DispatchState& st, Tensor& x,
                            Tensor* p) = 0;

  // Rows of member m of tp-ep for global expert e.
  int64_t rows(const DispatchState& st, int m, int64_t e) const {
    return st.table.data_as<int64_t>()[int64_t(m) * E_ + e];
  }

  ExpertGroups g_;
  int64_t E_, H_;
  int ep_, ep_rank_, etp_, etp_rank_;
  int64_t El_, e0_;  // local experts, the first of them
  DispatchBuffers buf_;
  std::vector<std::pair<int, int64_t>> blocks_;  // (member, global expert) in source order

 private:
  // The expert order: for each local expert, its rows of every block in source order.
  void expert_order(DispatchState& st) {
    std::vector<int64_t> start(blocks_.size(), 0);
    for (size_t b = 1; b < blocks_.size(); ++b)
      start[b] = start[b - 1] + rows(st, blocks_[b - 1].first, blocks_[b - 1].second);
    st.rows_per_expert.assign(size_t(El_), 0);
    int64_t* idx = buf_.idx_host.data_as<int64_t>();
    int64_t n = 0;
    for (int64_t e = e0_; e < e0_ + El_; ++e)
      for (size_t b = 0; b < blocks_.size(); ++b) {
        if (blocks_[b].second != e) continue;
        const int64_t c = rows(st, blocks_[b].first, e);
        for (int64_t i = 0; i < c; ++i) idx[n++] = start[b] + i;
        st.rows_per_expert[size_t(e - e0_)] += c;
      }
    st.expert_rows = n;
  }
};

// a2a-v over ep of the rows for each ep peer's experts, then all-gather-v over etp.
class AllToAllDispatcher final : public DispatcherBase {
 public:
  using DispatcherBase::DispatcherBase;

 protected:
  void count(DispatchState& st) override {
    // To ep peer q the rows of q's experts; from q its rows of this rank's experts.
    st.send.assign(size_t(ep_), 0);
    st.recv.assign(size_t(ep_), 0);
    const int me = etp_rank_ + etp_ * ep_rank_;
    for (int q = 0; q < ep_; ++q)
      for (int64_t e = q * El_; e < (q + 1) * El_; ++e) st.send[size_t(q)] += rows(st, me, e);
    for (int q = 0; q < ep_; ++q)
      for (int64_t e = e0_; e < e0_ + El_; ++e)
        st.recv[size_t(q)] += rows(st, etp_rank_ + etp_ * q, e);
    // What each ETP peer received, gathered over etp: blocks [etp peer][ep peer][local expert].
    st.gathered.assign(size_t(etp_), 0);
    for (int t = 0; t < etp_; ++t)
      for (int q = 0; q < ep_; ++q)
        for (int64_t e = e0_; e < e0_ + El_; ++e) {
          st.gathered[size_t(t)] += rows(st, t + etp_ * q, e);
          blocks_.push_back({t + etp_ * q, e});
        }
  }

  void to_sources(const Tensor& x, const Tensor& p, const DispatchState& st, Tensor& sx,
                  Tensor& sp) override {
    const int64_t N = st.tokens, r = sum(st.recv), H = H_;
    Tensor rx = rows_of(buf_.recv, r), rp = rows_of(buf_.recv_p, r);
    if (ep_ > 1) {
      g_.ep->all_to_all_v(x.view({N * H}), times(st.send, H), rx, times(st.recv, H));
      if (p.defined()) g_.ep->all_to_all_v(p, st.send, rp, st.recv);
    } else if (N > 0) {
      rx.copy_from(x);
      if (p.defined()) rp.copy_from(p);
    }
    if (etp_ > 1) {
      g_.etp->all_gather_v(rx.view({r * H}), sx, times(st.gathered, H));
      if (p.defined()) g_.etp->all_gather_v(rp, sp, st.gathered);
    } else {
      sx.copy_from(rx);
      if (p.defined()) sp.copy_from(rp);
    }
  }

  void from_sources(const Tensor& sx, const Tensor& sp, const DispatchState& st, Tensor& x,
                    Tensor* p) override {
    const int64_t N = st.tokens, S = st.source_rows, r = st.gathered[size_t(etp_rank_)], H = H_;
    Tensor rx = rows_of(buf_.recv, r), rp = rows_of(buf_.recv_p, r);
    if (etp_ > 1) {
      g_.etp->reduce_scatter_v(sx.view({S * H}), rx, times(st.gathered, H));
      if (p) g_.etp->reduce_scatter_v(sp, rp, st.gathered);
    } else {
      rx.copy_from(sx);
      if (p) rp.copy_from(sp);
    }
    if (ep_ > 1) {
      g_.ep->all_to_all_v(rx.view({r * H}), times(st.recv, H), x, times(st.send, H));
      if (p) g_.ep->all_to_all_v(rp, st.recv, *p, st.send);
    } else if (N > 0) {
      x.copy_from(rx);
      if (p) p->copy_from(rp);
    }
  }
};

// all-gather-v over tp-ep of every rank's rows; reduce-scatter-v back.
class AllGatherDispatcher final : public DispatcherBase {
 public:
  using DispatcherBase::DispatcherBase;

 protected:
  void count(DispatchState& st) override {
    const int G = ep_ * etp_;
    st.gathered.assign(size_t(G), 0);
    for (int m = 0; m < G; ++m)
      for (int64_t e = 0; e < E_; ++e) {
        st.gathered[size_t(m)] += rows(st, m, e);
        blocks_.push_back({m, e});
      }
  }

  void to_sources(const Tensor& x, const Tensor& p, const DispatchState& st, Tensor& sx,
                  Tensor& sp) override {
    g_.tp_ep->all_gather_v(x.view({st.tokens * H_}), sx, times(st.gathered, H_));
    if (p.defined()) g_.tp_ep->all_gather_v(p, sp, st.gathered);
  }

  void from_sources(const Tensor& sx, const Tensor& sp, const DispatchState& st, Tensor& x,
                    Tensor* p) override {
    g_.tp_ep->reduce_scatter_v(sx.view({st.source_rows * H_}), x, times(st.gathered, H_));
    if (p) g_.tp_ep->reduce_scatter_v(sp, *p, st.gathered);
  }
};

}  // namespace

std::unique_ptr<ExpertDispatcher> make_expert_dispatcher(DispatcherKind kind,
                                                         const ExpertGroups& groups,
                                                         int64_t num_experts, int64_t hidden,
                                                         const DispatchBuffers& buffers) {
  if (kind == DispatcherKind::all_gather)
    return std::make_unique<AllGatherDispatcher>(groups, num_experts, hidden, buffers);
  return std::make_unique<AllToAllDispatcher>(groups, num_experts, hidden, buffers);
}

}  // namespace origami
