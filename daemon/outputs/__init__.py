"""Where labels go: the ZeroMQ publisher and the other sinks (detections and rules, clips with
spectrograms, per-call verdicts), Prometheus metrics and systemd notification."""
