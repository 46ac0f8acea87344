"""The camera checks its CONNACK: a refused connection is a one-line error, not a traceback."""

from __future__ import annotations

import pytest

from cli.brokers import MosquittoBroker
from cli.main import main as cli_main
from devices import camera

pytestmark = pytest.mark.integration


def test_refused_connection_raises_with_the_reason() -> None:
    with MosquittoBroker(allow_anonymous=False) as broker:
        with pytest.raises(camera.ConnectRefused, match="refused the connection: Not authorized"):
            camera.run_camera("127.0.0.1", broker.port, "cam-auth", [b"\xff\xd8\xff"], fps=0, count=1)


def test_cli_reports_a_refused_connection_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with MosquittoBroker(allow_anonymous=False) as broker:
        rc = cli_main(["device", "camera", "--port", str(broker.port), "--count", "1", "--fps", "0"])
        err = capsys.readouterr().err
    assert rc == 1  # a runtime error (docs/operations.md: 1 runtime, 2 usage)
    assert err.count("\n") == 1 and "Not authorized" in err and f"127.0.0.1:{broker.port}" in err
    assert "Traceback" not in err
