"""Issue 15: the fine-tuning attack study (harness, keyed wiring, report)."""
