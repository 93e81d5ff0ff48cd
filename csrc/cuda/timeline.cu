// The per-CTA timeline's host side (common.cuh says what is recorded): one setter per translation unit that
// instruments kernels, all called by set_timeline. Built only with -DGPT_OSS_NATIVE_TIMELINE=ON.
#include "cuda/common.cuh"

#ifdef GPT_OSS_NATIVE_TIMELINE
#include <vector>

namespace gpt_oss {

namespace {
std::vector<void (*)(const TimelineBuffer&)>& timeline_setters() {
  static std::vector<void (*)(const TimelineBuffer&)> setters;  // filled during static initialisation
  return setters;
}
}  // namespace

void register_timeline_setter(void (*set)(const TimelineBuffer&)) { timeline_setters().push_back(set); }

void set_timeline(const TimelineBuffer& buffer) {
  for (auto set : timeline_setters()) set(buffer);
}

}  // namespace gpt_oss
#endif
