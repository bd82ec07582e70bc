"""Checkpoints of other formats in and out: the transformers Chameleon format (:mod:`.hf_chameleon`), streamed
tensor by tensor through :mod:`.stream` so that a checkpoint larger than memory converts."""
