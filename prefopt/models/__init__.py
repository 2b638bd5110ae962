"""Model plumbing: loading policies, references and reward models (HF directories, LoRA through
peft, 4-bit through bitsandbytes), saving them as plain HF artifacts, and the log-probs every
objective reads, computed through the fused kernel without materializing ``[tokens x vocab]`` logits."""
