"""Evaluation: cross-modal tasks judged by the procedural checkers, tokenizer reconstruction, perplexity."""
