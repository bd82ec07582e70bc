"""Research tools over a trained model: cross-modal attention maps (:mod:`.maps`) and their report and measurement
against the procedural renderer's coverage (:mod:`.report`)."""
