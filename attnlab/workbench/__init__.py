"""The workbench: training, evaluation, data, the CLI, benchmarks, experiments, publishing and the audit.

Nothing here ships as remote code; the model library (configuration_*, modeling_*, modeling_common,
tokenization_attnlab) sits flat in `attnlab/` beside it, as a Hub folder needs it to be.
"""
