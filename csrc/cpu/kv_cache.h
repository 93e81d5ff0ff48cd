// One layer's key/value cache for one sequence, fp32 (the CPU backend computes in fp32).
// An entry is the [kv_heads * head_dim] keys and the same for values of one position. A sliding-window layer
// keeps a ring of `window` entries (position p in slot p % window); a full layer grows in pages of
// kPageTokens entries. Page layout: [tokens][2 (k, v)][entry_floats].
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace gpt_oss {

class LayerKvCache {
 public:
  static constexpr int kPageTokens = 256;

  // ring_tokens > 0: a sliding ring of that many entries; 0: grows without bound (the caller caps it).
  LayerKvCache(int entry_floats, int ring_tokens);

  // Stores the entry of `position`, which must be the next one (the number of entries appended so far).
  void append(int64_t position, const float* key, const float* value);
  // The entry of an appended position still held (any, or the last `ring_tokens` for a ring).
  const float* key(int64_t position) const { return slot(position); }
  const float* value(int64_t position) const { return slot(position) + entry_floats_; }
  int64_t length() const { return length_; }

 private:
  const float* slot(int64_t position) const {
    const int64_t page_tokens = ring_tokens_ > 0 ? ring_tokens_ : kPageTokens;
    const int64_t index = ring_tokens_ > 0 ? 0 : position / page_tokens;
    return pages_[index].get() + (position % page_tokens) * 2 * entry_floats_;
  }

  int entry_floats_;
  int ring_tokens_;
  int64_t length_ = 0;
  std::vector<std::unique_ptr<float[]>> pages_;
};

}  // namespace gpt_oss
