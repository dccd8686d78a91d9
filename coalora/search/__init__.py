"""Section 5: the Pareto-based configuration search, one surrogate for training and the app.

``encoding`` (configuration -> GP inputs), ``gp`` (the loss GP and its calibrated band), ``acquisition``
(exact 2-D EHVI, Kriging-believer batches), ``pareto`` (masks, segment filter, hypervolumes), ``round``
(the training-time search), ``candidates``, ``front_query``, ``front`` (the app's front service) and
``validation`` (held-out accuracy and band coverage).
"""
