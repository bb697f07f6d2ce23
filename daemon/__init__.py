"""calmd: capture, segment, classify with calm_core, publish over ZeroMQ."""
