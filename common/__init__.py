"""The bottom layer: settings, Kafka/MQTT client factories, logging and file helpers. Imports no service code."""
