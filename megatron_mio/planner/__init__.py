"""The parallelism planner behind ``plan_parallelism``: memory per GPU (``memory``), predicted
step time (``step_time``), the ranking and its reasons (``recommend``), and fitting the step-time
constants to a short run (``calibration``).  Pure arithmetic on ``megatron_mio.model``'s presets
and FLOP count: no torch.  A tool-level concern: nothing in ``training/`` imports it.
"""
