#include "cpu/kv_cache.h"

#include <algorithm>
#include <stdexcept>

namespace gpt_oss {

LayerKvCache::LayerKvCache(int kv_heads, int head_dim, int ring_tokens)
    : kv_heads_(kv_heads), head_dim_(head_dim), ring_tokens_(ring_tokens) {}

void LayerKvCache::append(int64_t position, const float* key, const float* value) {
  if (position != length_) throw std::logic_error("LayerKvCache::append: positions must be appended in order");
  const int64_t tokens = page_tokens(), entry = static_cast<int64_t>(kv_heads_) * head_dim_;
  const size_t page = ring_tokens_ > 0 ? 0 : static_cast<size_t>(position / tokens);
  if (page == pages_.size()) pages_.push_back(std::make_unique<float[]>(key_floats() + tokens * entry));
  const int64_t slot = position % tokens, key_row = tokens;
  float* keys = pages_[page].get();
  for (int64_t i = 0; i < entry; ++i) keys[i * key_row + slot] = key[i];
  std::copy(value, value + entry, keys + key_floats() + slot * entry);
  ++length_;
}

void LayerKvCache::drop_last() {
  if (length_ == 0) throw std::logic_error("LayerKvCache::drop_last: the cache holds no entry");
  --length_;  // the entry stays in its page until the next append overwrites it; nothing reads past length_
}

LayerKvCache::Run LayerKvCache::run(int64_t position, int64_t max_length) const {
  const int64_t tokens = page_tokens();
  const size_t page = ring_tokens_ > 0 ? 0 : static_cast<size_t>(position / tokens);
  const int64_t slot = position % tokens;
  const float* base = pages_[page].get();
  const int64_t length = std::min({max_length, tokens - slot, length_ - position});
  return {base + slot, base + key_floats() + slot * kv_heads_ * head_dim_, tokens,
          static_cast<int>(length)};
}

}  // namespace gpt_oss
