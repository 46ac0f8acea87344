"""The contract shared by every part: topic names and message schemas.

- :mod:`topics.names`: MQTT and Kafka topic names (nothing else spells one).
- :mod:`topics.codec`: msgpack envelopes with a version field and :class:`ContractError`.
- :mod:`topics.vision`: frames and facial-expression results.
- :mod:`topics.deadletter`: rejected input.
- :mod:`topics.kubeedge`: KubeEdge twin / mapper JSON formats for device status.
"""

from topics.codec import ContractError

__all__ = ["ContractError"]
