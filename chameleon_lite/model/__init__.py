"""The decoder-only early-fusion transformer, its configuration presets and KV cache."""
