"""Where a request runs: one address for every placement decision.

- :mod:`placement.edge`: the edge's decision per request - :func:`~placement.edge.decide` (pure:
  ``Request`` + ``View`` + now -> ``Serve | Spill | Return | Shed``), the overload and DC-failure rules.
- :mod:`placement.load`: the edge's measured load and batch-time prediction (feeds the view).
- :mod:`placement.dc`: the DC latency model (feeds the view).
- :mod:`placement.device`: a camera device's choice (full frame, face crops, or on the device).
- :mod:`placement.cost`: the cost and energy of a placement.

Mechanisms that carry a decision out (MQTT, Kafka, the batcher) stay in the services.
"""

from placement.edge import Placement, Request, Return, Serve, Shed, Spill, View, decide

__all__ = ["Placement", "Request", "Return", "Serve", "Shed", "Spill", "View", "decide"]
