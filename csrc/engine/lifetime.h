// Buffers with lifetimes [t0, t1] (inclusive) packed into one arena: the layout both backends'
// plans use (cpu::Workspace, gpu::Arena). Greedy: largest buffers first, each at the lowest
// offset that does not collide with an already placed buffer whose lifetime overlaps.
#pragma once
#include <algorithm>
#include <cstddef>
#include <numeric>
#include <utility>
#include <vector>

namespace halcdl {

class LifetimeLayout {
 public:
  explicit LifetimeLayout(size_t align) : align_(align) {}

  int request(size_t bytes, int t0, int t1) {
    reqs_.push_back({std::max<size_t>(1, (bytes + align_ - 1) / align_) * align_, t0, t1, 0});
    return static_cast<int>(reqs_.size()) - 1;
  }

  // Places every request; returns the arena size (at least `min_total`).
  size_t assign(size_t min_total = 0) {
    std::vector<int> order(reqs_.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return reqs_[a].bytes > reqs_[b].bytes; });
    std::vector<int> placed;
    size_t total = min_total;
    for (int id : order) {
      Req& r = reqs_[id];
      std::vector<std::pair<size_t, size_t>> busy;
      for (int o : placed) {
        const Req& q = reqs_[o];
        if (q.t0 <= r.t1 && r.t0 <= q.t1) busy.push_back({q.off, q.off + q.bytes});
      }
      std::sort(busy.begin(), busy.end());
      size_t off = 0;
      for (auto& [lo, hi] : busy) {
        if (off + r.bytes <= lo) break;
        off = std::max(off, hi);
      }
      r.off = off;
      total = std::max(total, off + r.bytes);
      placed.push_back(id);
    }
    return total;
  }

  size_t offset(int id) const { return reqs_.at(id).off; }

 private:
  struct Req { size_t bytes; int t0, t1; size_t off; };
  size_t align_;
  std::vector<Req> reqs_;
};

}  // namespace halcdl
