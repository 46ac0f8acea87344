"""Speech path, signal side: RTP packets over MQTT -> G.711 decode -> jitter buffer -> 16 kHz PCM.

:class:`edge_agent.speech.stream.LegDecoder` is the entry point; VAD/ASR/diarization consume
its :class:`~edge_agent.speech.stream.PcmChunk` output.
"""
