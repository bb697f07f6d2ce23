"""Audio in: sources (microphone, RTSP, file, stdin), cutting streams into segments, and the queue of
segments waiting for the model."""
