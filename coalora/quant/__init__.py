"""Section 1 of the method: the per-matrix configuration space, its bits accounting, NF-k codebooks with double
quantization, bit packing, and putting a configuration on a loaded model.
"""
