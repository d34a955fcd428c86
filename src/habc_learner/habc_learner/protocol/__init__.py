"""The paper's protocol in simulation: every learner method side by side, with honest statistics.

    habc-protocol --task transfer_cube --seeds 0 1 2 \\
        --methods sft imit_dagger imit_recap habc_v habc --rounds 2 --rollouts 20 \\
        --round-steps 600 --eval-episodes 30 --step2-rounds 1

(or ``python bench/bench_protocol.py ...``, the same command). For one task and each seed:

1. ``--demos`` scripted demonstrations whose quality is set by ``--demo-noise`` (the expert's
   per-episode waypoint offset σ in m on ALOHA, per-step action noise σ on Meta-World) →
   rosbag2 episode bags → the bag reader → an SFT checkpoint (``--sft-steps``); only the
   successful demonstrations are training data.
2. Step 1, equal budget: every method of ``--methods`` (names of the learner's registry,
   :data:`habc_learner.core.methods.METHODS`, so a newly registered method such as ``ire_vla``
   is picked up as is) starts from the SFT policy and runs ``--rounds`` online rounds: rollouts
   of its latest policy (``--rollouts`` episodes, the scripted operator taking over in about
   ``--takeover-fraction`` of the episodes heading for failure) written as episode bags, read
   back through the bag reader into the replay store, then ``--round-steps`` gradient steps.
   A method that trains on demonstrations only (``sft``) gets the same gradient steps and no
   rollouts. Rollouts of one policy on the same object poses are recorded once and shared: all
   methods' round-1 rollouts come from the same SFT policy.
3. Step 2: from the ``--step2-from`` (HABC) checkpoint of the last step-1 round, every method
   of ``--step2-methods`` (continued HABC, HABC+IR) continues for ``--step2-rounds`` more rounds
   with the full learner state (critic, optimizer, counters); HABC+IR has intervention
   reweighting from the first step-2 round on.
4. Evaluation of every checkpoint on ``--eval-episodes`` fresh object poses (never used for
   training, the same poses for every method of a seed) without takeovers: success rate and
   the mean length of successful episodes.

Every round leaves one JSON record under ``--work/<task>/seed<k>/<method>/round_<r>.json``
(evaluation per episode, rollout and training statistics, the analysis below); a second
invocation with the same arguments reuses complete bags, resumes checkpoints and skips every
round with a record, so an interrupted run resumes and a finished one only rewrites the report.

Report (``--out/<task>/``): ``results.md`` (tables like the paper's, mean and 95 % t-interval
over seeds, the exact command and wall time), ``results.json`` (every round record),
``success_per_round.png`` (success and successful-episode length per round per method), and
the analysis: critic calibration (p_v against the realised outcome on rollouts the critic has
not trained on; ``calibration.png``), weight statistics per data source against the paper's
mean g_t of 0.68–0.86 (``weights.png``), the Imit-Recap pass rate against the paper's 19–27 %,
and p_v, V_e, g_t along a few episodes (``traces.png``, the paper's Figures 4–5).

The modules, each read in one sitting:

- :mod:`.config`: :class:`ProtocolConfig` (one invocation, validated), the tasks' tuned SFT
  starts, seed ranges, method variants (``habc+mc``), :class:`Counters`.
- :mod:`.run`: :class:`SeedRun` (one seed: demonstrations, SFT start, each method's online
  rounds as a :class:`~habc_learner.core.rounds.RoundEngine`), the band tuner, and
  :func:`run_protocol` (every seed, then the report), all resumable.
- :mod:`.stats`: the critic's outputs and their analysis, the intervals (t, Wilson, paired
  bootstrap).
- :mod:`.report` and :mod:`.plots`: ``results.md``, ``results.json`` and the figures.
- :mod:`.cli`: ``habc-protocol`` (``python -m habc_learner.protocol``).
"""

from __future__ import annotations

from habc_learner.protocol.cli import build_parser, config_from_args, main
from habc_learner.protocol.config import (
    _METAWORLD,
    ALOHA_TASKS,
    DEFAULT_DEMO_CANDIDATES,
    DEFAULT_METHODS,
    DEFAULT_STEP2,
    EVAL_SEED_BASE,
    PAPER_G_SUCCESS,
    PAPER_RECAP_PASS,
    RECORD_VERSION,
    SEED_STRIDE,
    TASK_DEFAULTS,
    TUNE_POSE_OFFSET,
    VAL_DEMO_OFFSET,
    VARIANTS,
    Counters,
    ProtocolConfig,
    TaskDefaults,
    backend_of,
    critic_overrides,
    demo_seed,
    eval_seed,
    method_config,
    needs_rollouts,
    normalize_task,
    rollout_seed,
    sft_name,
    split_variant,
    tune_seed,
    val_demo_seed,
    variant_overrides,
)
from habc_learner.protocol.plots import plot_analysis, plot_rounds
from habc_learner.protocol.report import (
    load_records,
    render_analysis,
    render_markdown,
    render_paired,
    render_sft_start,
    render_suffix_table,
    write_report,
)
from habc_learner.protocol.run import (
    TUNING_FIELDS,
    SeedRun,
    continue_run,
    resolve_demos,
    run_protocol,
    tune_demos,
)
from habc_learner.protocol.stats import (
    T975,
    analyse,
    ci95,
    critic_outputs,
    fmt_ci,
    fmt_rate,
    paired_rows,
    reliability,
    wilson_interval,
)

__all__ = [
    "ALOHA_TASKS",
    "DEFAULT_DEMO_CANDIDATES",
    "DEFAULT_METHODS",
    "DEFAULT_STEP2",
    "EVAL_SEED_BASE",
    "PAPER_G_SUCCESS",
    "PAPER_RECAP_PASS",
    "RECORD_VERSION",
    "SEED_STRIDE",
    "T975",
    "TASK_DEFAULTS",
    "TUNE_POSE_OFFSET",
    "TUNING_FIELDS",
    "VAL_DEMO_OFFSET",
    "VARIANTS",
    "_METAWORLD",
    "Counters",
    "ProtocolConfig",
    "SeedRun",
    "TaskDefaults",
    "analyse",
    "backend_of",
    "build_parser",
    "ci95",
    "config_from_args",
    "continue_run",
    "critic_outputs",
    "critic_overrides",
    "demo_seed",
    "eval_seed",
    "fmt_ci",
    "fmt_rate",
    "load_records",
    "main",
    "method_config",
    "needs_rollouts",
    "normalize_task",
    "paired_rows",
    "plot_analysis",
    "plot_rounds",
    "reliability",
    "render_analysis",
    "render_markdown",
    "render_paired",
    "render_sft_start",
    "render_suffix_table",
    "resolve_demos",
    "rollout_seed",
    "run_protocol",
    "sft_name",
    "split_variant",
    "tune_demos",
    "tune_seed",
    "val_demo_seed",
    "variant_overrides",
    "wilson_interval",
    "write_report",
]
