"""The few-shot method: CALM's equations (calm), its settings and presets, fit-time choices (fitting),
the probe combiner, sub-classes, the classifier and its file, detection thresholds, calibration and refits."""
