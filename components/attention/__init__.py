"""The attention dispatcher: scoped patching through transformers' AttentionInterface (see ``session``)."""
