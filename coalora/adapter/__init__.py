"""Section 3: the configuration-aware adapter (shared LoRA A, B and the network theta that maps a layer's
configuration to an r x r adjustment), and its trained-file format.
"""
