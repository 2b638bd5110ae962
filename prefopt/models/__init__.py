"""Model plumbing: loading policies, references and reward models (HF directories, GGUF files, LoRA
through peft, 4-bit through bitsandbytes), saving them as plain HF artifacts, the log-probs every
objective reads, computed through the fused kernel without materializing ``[tokens x vocab]`` logits
(with padding-free sequence packing), and the on-disk cache of precomputed reference log-probs
(one pass, cached by model + data fingerprint)."""
