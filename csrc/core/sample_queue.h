// The bookkeeping of run-ahead sampling (Backend::submit_sample / collect_sample) for one sequence. Every backend
// keeps one per sequence, so the rules and their errors are written once:
//   - submissions are collected in order, at most kMaxOutstandingSamples at a time;
//   - each outstanding submission holds a ring entry in [0, kMaxOutstandingSamples), where the backend keeps its
//     data (CPU: the drawn token; CUDA: the step's staged state, its pinned result and event); an entry is handed
//     out again only after its submission was collected, or the sequence was freed (clear());
//   - a device-fed submission (tokens == nullptr) feeds the draw of the submission before it, so it needs one,
//     with nothing fed since: forward() and drop_last_token() forget the draw;
//   - a failed draw (the sampler found NaN / inf logits) also fails, at their collect, the device-fed steps it fed.
// Nothing here waits or touches a device; the backend serialises calls (its own mutex).
#pragma once

#include <cstdint>

#include "core/backend.h"

namespace gpt_oss {

class SampleQueue {
 public:
  // The ring entry the next submission takes. Throws, changing nothing, when the submission is malformed
  // (n < 1, n != 1 when device-fed, bad sampling parameters), the queue is full, or a device-fed submission has
  // no draw to feed.
  int reserve(int seq, const int32_t* tokens, int n, const SamplingParams& params) const;
  // Records the submission reserve() allowed, once the backend has queued its work.
  void push(bool device_fed);

  // The ring entry of the oldest outstanding submission; throws when none is outstanding.
  int front(int seq) const;
  // Retires the oldest submission once its result was read; `drew` is false when its sampler failed. Throws,
  // after retiring it, when it was device-fed a failed draw (its token means nothing); a backend reports its own
  // sampler's failure after this returns.
  void pop(int seq, bool drew);

  int outstanding() const { return count_; }
  // The ring entry of the latest submission, whose draw a device-fed submission feeds (valid after reserve()
  // accepted one).
  int latest() const { return (head_ + count_ + kMaxOutstandingSamples - 1) % kMaxOutstandingSamples; }
  // Throws when submissions are outstanding: `call` would run ahead of them or take their place.
  void require_empty(int seq, const char* call) const { require_no_outstanding_samples(seq, count_, call); }
  // The latest draw is not the sequence's newest input (forward() fed tokens after it, or drop_last_token()
  // took away the token it would follow): a device-fed submission has nothing to feed.
  void forget_draw() { has_draw_ = false; }
  // A new or freed sequence (the backend has waited for any outstanding work first).
  void clear() { *this = SampleQueue(); }

 private:
  int head_ = 0, count_ = 0;
  bool device_fed_[kMaxOutstandingSamples] = {};
  bool has_draw_ = false;          // a submission was made since the sequence began or forward() fed it
  bool last_draw_failed_ = false;  // the last collected draw failed, or was fed a failed one
};

}  // namespace gpt_oss
