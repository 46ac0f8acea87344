"""Settings of the results store, the archive service and the operator console.

A section of :class:`common.settings.Settings` (``EDGE_OFFLOAD_ARCHIVE__*``, TOML ``[archive]``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

__all__ = ["ArchiveSettings"]


class ArchiveSettings(BaseModel):
    """Where results are kept, for how long, and how the console serves them."""

    store_url: str = Field("sqlite:///edge-offload-archive.sqlite3",
                           description="sqlite:///PATH (embedded, FTS5) or postgresql://user@host/db (tsvector)")
    client_id: str = Field("edge-offload-archive", description="MQTT client id of the archive's persistent session")
    subscribe_qos: int = Field(1, ge=0, le=1)
    keep_transcripts_days: float = Field(90.0, gt=0, description="transcript segments older than this are purged")
    keep_face_results_days: float = Field(30.0, gt=0, description="vision results older than this are purged")
    keep_audio_days: float = Field(7.0, gt=0, description="audio clips older than this are purged")
    keep_thumbnails_days: float = Field(7.0, gt=0, description="camera thumbnails older than this are purged")
    keep_status_days: float = Field(7.0, gt=0, description="edge/device status history older than this is purged")
    purge_every_s: float = Field(3600.0, gt=0, description="how often the archive runs the retention purge")
    http_port: int = Field(9110, ge=0, description="archive /metrics, /healthz; 0 picks a free port")
    console_host: str = "127.0.0.1"
    console_port: int = Field(8443, ge=0, description="operator console port; 0 picks a free port")
    console_cert_file: Path | None = Field(None, description="TLS certificate (PEM) of the console; with key: HTTPS")
    console_key_file: Path | None = Field(None, description="TLS private key (PEM) of console_cert_file")
    session_hours: float = Field(8.0, gt=0, description="an operator's console session expires after this")
    login_max_failures: int = Field(5, ge=1, description="failed console logins per username, and per remote "
                                    "address, within login_window_s before further logins are refused (HTTP 429)")
    login_window_s: float = Field(300.0, gt=0, description="sliding window of login_max_failures")
    low_confidence: float = Field(0.6, ge=0, le=1, description="segments below this confidence are shaded")
