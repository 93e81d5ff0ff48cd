// The sampling law every backend follows (backend.h sample_logits):
//   temperature 0 → argmax, lowest index on ties.
//   else z_i = double(logit_i) / double(T), and the kept set K: every token; with top_k > 0 only the top_k
//   largest logits (ties → lower index); with top_p < 1 only the shortest prefix of those, in descending
//   probability p = softmax(z) over them (ties → lower index), whose mass ≥ top_p (at least one token). Then
//     token = argmax over i in K of z_i + g_i   (ties → lower index),
//     g_i = −log(−log(u_i)), u_i = token_uniform(draw_key(seed, draw), i) (core/rng.h, gumbel_key), in double.
// Why this samples softmax(z) over K: the g_i are independent Gumbel(0, 1) draws, and for Gumbel noise
// P(argmax_{i∈K} z_i + g_i = j) = exp(z_j) / Σ_{i∈K} exp(z_i) (the Gumbel-max trick), i.e. the renormalised
// distribution over K that an inverse CDF would give, with another mapping from randomness to tokens. Each key
// depends on its own token only, so any reduction order finds the same winner: with no cut (the default, T = 1)
// the draw is one O(vocab) pass with no sort and no softmax, and the device fuses it into the unembedding.
// The device computes the same doubles (z is a correctly rounded division on both sides) except log, which may
// differ by an ulp between libm and the CUDA math library, so CPU and device agree except where two keys are
// within ~1e-15 relative of each other.
// The nucleus is found on a lazily sorted prefix: chunks of growing size are selected (nth_element) and sorted
// until its mass is reached.
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

// K when top_k or top_p cuts: the top_k by logit, then the nucleus of those. `best` is the argmax.
std::vector<int32_t> kept_tokens(const float* logits, int vocab, const SamplingParams& params, int32_t best) {
  std::vector<int32_t> ids(vocab);
  for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
  if (params.top_k_cuts(vocab)) {
    std::nth_element(ids.begin(), ids.begin() + (params.top_k - 1), ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    ids.resize(params.top_k);
  }
  if (params.top_p >= 1.0f) return ids;

  const double t = static_cast<double>(params.temperature), max_z = static_cast<double>(logits[best]) / t;
  std::vector<double> probs(vocab, 0.0);
  double total = 0.0;
  for (int32_t id : ids) total += (probs[id] = std::exp(static_cast<double>(logits[id]) / t - max_z));
  for (int32_t id : ids) probs[id] /= total;
  DescendingOrder order(std::move(ids), probs);
  std::vector<int32_t> nucleus;
  double mass = 0.0;
  for (size_t i = 0; i < order.size() && mass < static_cast<double>(params.top_p); ++i) {
    nucleus.push_back(order.at(i));
    mass += probs[nucleus.back()];
  }
  return nucleus;
}

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

  // Gumbel-max over K. -inf logits have key -inf and lose to the finite argmax, which every K holds.
  const double temperature = static_cast<double>(params.temperature);
  const uint64_t key = draw_key(params.seed, draw);
  int32_t token = best;
  double token_key = gumbel_key(logits[best], temperature, key, best);
  auto offer = [&](int32_t i) {
    const double k = gumbel_key(logits[i], temperature, key, i);
    if (k > token_key || (k == token_key && i < token)) token = i, token_key = k;
  };
  if (!params.cuts(vocab)) {
    for (int32_t i = 0; i < vocab; ++i) offer(i);
  } else {
    for (int32_t i : kept_tokens(logits, vocab, params, best)) offer(i);
  }
  return token;
}

}  // namespace gpt_oss
