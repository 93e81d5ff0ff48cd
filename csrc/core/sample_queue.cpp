#include "core/sample_queue.h"

#include <stdexcept>
#include <string>

namespace gpt_oss {

void require_no_outstanding_samples(int seq, int outstanding, const char* call) {
  if (outstanding > 0)
    throw std::runtime_error("sequence " + std::to_string(seq) + " has " + std::to_string(outstanding) +
                             " submitted sample(s) not collected: collect_sample() them before " + call);
}

void require_droppable_last_token(int seq, int64_t length, int outstanding, int64_t dropped_at) {
  const std::string name = "sequence " + std::to_string(seq);
  if (length == 0) throw std::runtime_error(name + " holds no token to drop");
  require_no_outstanding_samples(seq, outstanding, "drop_last_token");
  if (length == dropped_at)
    throw std::runtime_error(name + " was fed nothing since its last drop_last_token: only the newest token "
                             "may be dropped (the sliding-window rings no longer hold the one before it)");
}

int32_t Backend::forward_sample(int seq, const int32_t* tokens, int n, const SamplingParams& params,
                                uint64_t draw) {
  require_no_outstanding_samples(seq, outstanding_samples(seq), "forward_sample");
  submit_sample(seq, tokens, n, params, draw);
  return collect_sample(seq);
}

int SampleQueue::reserve(int seq, const int32_t* tokens, int n, const SamplingParams& params) const {
  const std::string name = "sequence " + std::to_string(seq);
  if (n < 1) throw std::invalid_argument("submit_sample needs at least one token");
  if (tokens == nullptr && n != 1)
    throw std::invalid_argument("a device-fed submission (no tokens) feeds exactly one token, the previous draw");
  params.validate();
  if (count_ == kMaxOutstandingSamples)
    throw std::runtime_error(name + " already has " + std::to_string(count_) +
                             " submitted samples not collected, the most run-ahead allows: collect_sample() first");
  if (tokens == nullptr && !has_draw_)
    throw std::runtime_error(name + " has no drawn token to feed (no tokens given): its first submission, and "
                             "the first after a forward(), needs the tokens");
  if (tokens == nullptr && count_ == 0 && last_draw_failed_)
    throw std::runtime_error(name + "'s last draw failed, so there is no token to feed: give the tokens");
  return (head_ + count_) % kMaxOutstandingSamples;
}

void SampleQueue::push(bool device_fed) {
  device_fed_[(head_ + count_) % kMaxOutstandingSamples] = device_fed;
  ++count_;
  has_draw_ = true;
}

int SampleQueue::front(int seq) const {
  if (count_ == 0)
    throw std::runtime_error("sequence " + std::to_string(seq) +
                             " has no submitted sample to collect: submit_sample() first");
  return head_;
}

void SampleQueue::pop(int seq, bool drew) {
  const bool fed_a_failure = device_fed_[front(seq)] && last_draw_failed_;
  last_draw_failed_ = !drew || fed_a_failure;
  head_ = (head_ + 1) % kMaxOutstandingSamples;
  --count_;
  if (fed_a_failure)
    throw std::runtime_error("sampling failed: sequence " + std::to_string(seq) +
                             "'s step was fed the failed draw of the step before it; nothing was sampled");
}

}  // namespace gpt_oss
