"""Generation: prefill/decode engine, the per-row modality state machine, detokenizer routing and writers."""
