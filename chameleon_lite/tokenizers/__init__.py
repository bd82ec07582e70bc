"""The three tokenizers (text BPE, image VQ, audio codec) that map each modality into the unified vocabulary."""
