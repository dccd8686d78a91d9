"""The equal-compute, multi-seed comparison protocol (`coalora compare`; method.md 6).

Every method gets the same training compute, counted in **token-passes** (forward + backward over
training tokens, summed over configurations: ``steps * batch * seqlen * configurations per step``):
the six per-configuration runs of QLoRA / LQ-LoRA together, CoA-LoRA's one run, its theta-off
ablation's one run and Shared-LoRA's one run all spend ``C = len(budgets) * per_config_steps *
batch * seqlen``. CoA-LoRA and Shared-LoRA are also run at ``compute_scales`` times C.

Methods (the names every file uses):

* ``coalora``: theta + shared LoRA, K configurations per step, Pareto search every ``search_every``;
* ``coalora-theta-off``: the same run with U = I (same data, sampling, search and compute);
* ``shared``: one plain LoRA over CoA-LoRA's initial training set (the allocator's solutions at
  ``initial_budgets`` budgets), one configuration per step, no search;
* ``qlora`` / ``lqlora``: one adapter per evaluation budget on that budget's configuration;
* ``none``: the quantized model alone.

Evaluation configurations are fixed for the whole protocol (``eval_configs.json``): the allocator's
solution at each budget, members of the initial training set nearest to each budget, and random
configurations far from it. Each scored point is labelled against **its own run's** training set
(the hashes its steps took gradients on): ``own`` (a per-configuration run on its configuration),
``seen``, ``unseen``, ``ood``. Points are scored by perplexity and KL to the unquantized model
under one eval spec, with per-window sums kept for the intervals (:mod:`coalora.train.protocol_report`).

Learning rates come from a grid of short runs scored on a validation split carved from the
training plays (``TrainConfig.validation_windows``), never on the held-out plays.

Work is split into **units** (one training run and its scoring, minutes each); a finished unit is a
small JSON file under ``<out>/units/``, so the protocol resumes unit by unit across sessions, and
an interrupted unit resumes from its checkpoint under ``$COALORA_HOME/protocol``.

Modules: :mod:`.config` (``ProtocolConfig``), :mod:`.units` (``Unit`` and each unit's
``TrainConfig``), :mod:`.grid` (the rate grids), :mod:`.arms` (ablation arms), :mod:`.schedule`
(the order of units), :mod:`.prepare` (what units share), :mod:`.scoring`, :mod:`.run`,
:mod:`.step_logs` (the kept step logs and each run's stability). This
package re-exports their public names, so ``from coalora.train import protocol`` reaches them all.
"""

from coalora.train.protocol.arms import FIXED_BY_PROTOCOL, Arm, add_arm, check_arm, load_arms
from coalora.train.protocol.config import METHODS, PER_CONFIG, SHARED_ADAPTER, ProtocolConfig
from coalora.train.protocol.grid import MAX_EXTENSIONS, chosen_rates, extended, grid_units, half_decade, theta_units
from coalora.train.protocol.prepare import Context, prepare, versions
from coalora.train.protocol.run import load_units, run, run_unit
from coalora.train.protocol.schedule import schedule
from coalora.train.protocol.scoring import kind_of
from coalora.train.protocol.step_logs import keep_finished
from coalora.train.protocol.units import Unit, train_config

__all__ = ["FIXED_BY_PROTOCOL", "MAX_EXTENSIONS", "METHODS", "PER_CONFIG", "SHARED_ADAPTER", "Arm", "Context",
           "ProtocolConfig", "Unit", "add_arm", "check_arm", "chosen_rates", "extended", "grid_units", "half_decade",
           "keep_finished", "kind_of", "load_arms", "load_units", "prepare", "run", "run_unit", "schedule", "theta_units",
           "train_config", "versions"]
