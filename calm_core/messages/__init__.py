"""The wire between calmd and its subscribers: typed events with a version and a JSON Schema each
(events, schemas/), and a ZeroMQ subscriber (client). Standard library only, apart from pyzmq in client;
importing this package loads neither torch nor the model code."""
