#include "cpu/kv_cache.h"

#include <algorithm>
#include <stdexcept>

namespace gpt_oss {

LayerKvCache::LayerKvCache(int entry_floats, int ring_tokens) : entry_floats_(entry_floats), ring_tokens_(ring_tokens) {}

void LayerKvCache::append(int64_t position, const float* key, const float* value) {
  if (position != length_) throw std::logic_error("LayerKvCache::append: positions must be appended in order");
  const int64_t page_tokens = ring_tokens_ > 0 ? ring_tokens_ : kPageTokens;
  const size_t page = ring_tokens_ > 0 ? 0 : static_cast<size_t>(position / page_tokens);
  if (page == pages_.size())
    pages_.push_back(std::make_unique<float[]>(static_cast<size_t>(page_tokens) * 2 * entry_floats_));
  float* entry = pages_[page].get() + (position % page_tokens) * 2 * entry_floats_;
  std::copy(key, key + entry_floats_, entry);
  std::copy(value, value + entry_floats_, entry + entry_floats_);
  ++length_;
}

}  // namespace gpt_oss
