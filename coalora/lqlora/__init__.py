"""Section 2: LQ-LoRA's machinery: each matrix's quantization error under every configuration (optionally
activation-weighted), the knapsack allocator that meets an average-bits budget, and the low-rank split.
"""
