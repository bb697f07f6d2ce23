"""The model side of calmd: the service that owns the backbone and the classifier, and the streams it
serves."""
