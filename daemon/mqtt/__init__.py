"""calm-mqtt: a separate process that subscribes to calmd (or calm-proxy) over ZeroMQ and publishes labels,
events, stream states and call verdicts on MQTT, with Home Assistant discovery (see main.py)."""
