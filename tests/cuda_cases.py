"""Tiny gpt-oss-shaped configurations for the CUDA end-to-end tests (random checkpoints). Widths are multiples
of 64 but not of 128, like gpt-oss's 2880; vocabularies are odd."""

CASES = {
    # gpt-oss's attention (64 q heads, 8 KV heads, window 128) and the 20b's expert count.
    "gpt-oss-heads-32-experts": {
        "num_layers": 2, "num_experts": 32, "experts_per_token": 4, "vocab_size": 4099, "hidden_size": 320,
        "intermediate_size": 192, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
        "sliding_window": 128,
    },
    # The 120b's expert count, 3 layers (sliding, full, sliding), small GQA, a window the ring wraps often.
    "128-experts-window-16": {
        "num_layers": 3, "num_experts": 128, "experts_per_token": 4, "vocab_size": 3001, "hidden_size": 192,
        "intermediate_size": 320, "head_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "sliding_window": 16,
    },
    # gpt-oss's own widths (hidden = intermediate = 2880) in two layers.
    "full-width": {
        "num_layers": 2, "num_experts": 32, "experts_per_token": 4, "vocab_size": 2053, "hidden_size": 2880,
        "intermediate_size": 2880, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
        "sliding_window": 128,
    },
}
