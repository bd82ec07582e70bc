"""Data: the procedural corpus and its checkers, manifests, pretokenized shards and the packing loader."""
