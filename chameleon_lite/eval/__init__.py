"""Evaluation: cross-modal tasks judged by the procedural checkers, tokenizer reconstruction, perplexity.

The task names live here, not in :mod:`~chameleon_lite.eval.harness`, so that the command line can offer them
without importing the harness (and torch)."""

TASKS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "interleaved", "instruction")
# the held-out suite (chameleon_lite.eval.heldout; the same names as data.grammar.EVAL_TASKS + case_variants, which a
# test checks)
HELDOUT_TASKS = (
    "text_to_image",
    "text_to_audio",
    "reserved_combination",
    "multi_item",
    "caption",
    "followup",
    "out_of_scope",
    "case_variants",
)
