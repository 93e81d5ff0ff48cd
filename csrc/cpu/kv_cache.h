// One layer's key/value cache for one sequence, fp32 (the CPU backend computes in fp32).
// Entries live in pages of `page_tokens` positions; a full-attention layer grows by pages of kPageTokens, a
// sliding-window layer keeps one page used as a ring (position p in slot p % ring_tokens). The ring must be
// wider than the window by a whole forward chunk: a chunk's keys are appended before its attention runs, and its
// first query still needs the window before it.
// Page layout (so attention streams keys and values without transposing or reducing):
//   keys   [kv_heads][head_dim][page_tokens]   transposed: one position per column
//   values [page_tokens][kv_heads][head_dim]
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace gpt_oss {

class LayerKvCache {
 public:
  static constexpr int kPageTokens = 256;

  // ring_tokens > 0: a sliding ring of that many entries; 0: grows without bound (the caller caps it).
  LayerKvCache(int kv_heads, int head_dim, int ring_tokens);

  // Stores the entry of `position`, which must be the next one (the number of entries appended so far).
  // key and value are [kv_heads * head_dim].
  void append(int64_t position, const float* key, const float* value);
  // Forgets the newest entry: the next append takes its position (and its slot). In a ring, appending it had
  // overwritten the entry a ring width earlier, which no query from its position on reads; the backend drops
  // one entry before the next append, never more (Backend::drop_last_token).
  void drop_last();
  int64_t length() const { return length_; }

  // Consecutive positions [position, position + length) stored side by side in one page.
  struct Run {
    const float* keys;    // key (head g, dim d, i-th position of the run): keys[(g * head_dim + d) * key_row + i]
    const float* values;  // value (i, g, d): values[(i * kv_heads + g) * head_dim + d]
    int64_t key_row;
    int length;
  };
  // The longest run that starts at an appended, still-held position and has at most max_length positions.
  Run run(int64_t position, int64_t max_length) const;

 private:
  int64_t page_tokens() const { return ring_tokens_ > 0 ? ring_tokens_ : kPageTokens; }
  int64_t key_floats() const { return static_cast<int64_t>(kv_heads_) * head_dim_ * page_tokens(); }

  int kv_heads_, head_dim_, ring_tokens_;
  int64_t length_ = 0;
  std::vector<std::unique_ptr<float[]>> pages_;  // each: keys then values
};

}  // namespace gpt_oss
