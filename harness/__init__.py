"""Study harness: GLUE tasks and data, presets, the training loop, logs and the papermill grid."""
