// The sampling law every backend follows (backend.h sample_logits):
//   temperature 0 → argmax, lowest index on ties.
//   else z = logits / T; keep the top_k largest (top_k > 0; ties → lower index); p = softmax over the kept;
//   order kept tokens by descending p (ties → lower index); keep the shortest prefix whose mass ≥ top_p (at
//   least one token); renormalise; u = uniform_draw(seed, draw); return the first token whose cumulative
//   renormalised mass exceeds u (the last kept token if rounding leaves u above them all).
// Probabilities and sums are double. Only the prefix the law needs is sorted: chunks of growing size are
// selected (nth_element) and sorted until the nucleus and the draw are settled, so top_p = 1 costs O(vocab).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/rng.h"

namespace gpt_oss {

namespace {

int32_t argmax(const float* logits, int vocab) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

// Candidates in descending probability order, sorted lazily chunk by chunk.
class DescendingOrder {
 public:
  DescendingOrder(std::vector<int32_t> ids, const std::vector<double>& probs) : ids_(std::move(ids)), p_(probs) {}
  size_t size() const { return ids_.size(); }
  // The i-th most probable candidate (i < size()).
  int32_t at(size_t i) {
    while (i >= sorted_) extend();
    return ids_[i];
  }

 private:
  bool before(int32_t a, int32_t b) const { return p_[a] > p_[b] || (p_[a] == p_[b] && a < b); }
  void extend() {
    const size_t next = std::min(ids_.size(), std::max<size_t>(64, sorted_ * 8));
    auto cmp = [this](int32_t a, int32_t b) { return before(a, b); };
    std::nth_element(ids_.begin() + sorted_, ids_.begin() + (next - 1), ids_.end(), cmp);
    std::sort(ids_.begin() + sorted_, ids_.begin() + next, cmp);
    sorted_ = next;
  }

  std::vector<int32_t> ids_;
  const std::vector<double>& p_;
  size_t sorted_ = 0;
};

}  // namespace

int32_t sample_logits(const float* logits, int vocab, const SamplingParams& params, uint64_t draw) {
  if (vocab <= 0) throw std::invalid_argument("sample_logits: the logits are empty");
  for (int i = 0; i < vocab; ++i)
    if (std::isnan(logits[i]) || logits[i] == INFINITY)
      throw std::runtime_error("sample_logits: logit " + std::to_string(i) + " is " +
                               (std::isnan(logits[i]) ? "NaN" : "+inf") + " (the model diverged)");
  const int32_t best = argmax(logits, vocab);
  if (params.temperature == 0.0f) return best;
  if (std::isinf(logits[best]) && logits[best] < 0)
    throw std::runtime_error("sample_logits: every logit is -inf, nothing can be sampled");

  // Candidates: all tokens, or the top_k by logit.
  std::vector<int32_t> ids(vocab);
  for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
  if (params.top_k > 0 && params.top_k < vocab) {
    std::nth_element(ids.begin(), ids.begin() + (params.top_k - 1), ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    ids.resize(params.top_k);
  }
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  const double max_z = static_cast<double>(logits[best]) * inv_t;
  std::vector<double> probs(vocab, 0.0);
  double total = 0.0;
  for (int32_t id : ids) total += (probs[id] = std::exp(static_cast<double>(logits[id]) * inv_t - max_z));
  for (int32_t id : ids) probs[id] /= total;

  DescendingOrder order(std::move(ids), probs);
  // The nucleus: the shortest descending prefix with mass >= top_p (every candidate when top_p is 1).
  size_t kept = order.size();
  double kept_mass = 0.0;
  if (params.top_p < 1.0f) {
    for (size_t i = 0; i < order.size(); ++i) {
      kept_mass += probs[order.at(i)];
      if (kept_mass >= static_cast<double>(params.top_p)) {
        kept = i + 1;
        break;
      }
    }
  } else {
    kept_mass = 1.0;  // the candidates' probabilities were just normalised
  }
  // Inverse CDF of the renormalised nucleus, walked in descending order.
  const double target = uniform_draw(params.seed, draw) * kept_mass;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += probs[order.at(i)];
    if (cumulative > target) return order.at(i);
  }
  return order.at(kept - 1);
}

}  // namespace gpt_oss
