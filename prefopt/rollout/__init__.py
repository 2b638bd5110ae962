"""Online machinery: the sampler and its KV-cached decode loop, reward sources (function, reward
model, sums of terms), the rollout source online objectives train from, and the held-out evaluation
that samples from the policy and its reference."""
