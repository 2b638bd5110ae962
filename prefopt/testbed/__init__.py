"""The built-in worlds (no downloads): toy tasks with a gold reward (``reviews``, ``arith``), their
word-level tokenizer, the SFT policy trained on their demonstrations, preference pairs sampled from
it and labelled by the gold reward, and disjoint train / validation / test prompts; all cached."""
