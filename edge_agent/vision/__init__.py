"""Vision path: camera frames -> faces -> facial expressions (:class:`~edge_agent.vision.service.VisionService`)."""
