"""Section 5: Pareto utilities, the GP surrogate and EHVI acquisition, the training-time configuration search,
and the front service the app queries.
"""
