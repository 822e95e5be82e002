"""moto's standalone S3 server (the endpoint s3fs itself is tested against) for the object-storage tests, run as
``python -m tests.s3server PORT FOLDER``, with one fault a test can ask for: an upload cut off in the middle.

A test writes a key's suffix to ``FOLDER/hold``; every PUT whose path ends with it (the client's retries too) is
held (the server writes the path to ``FOLDER/held``) until ``FOLDER/release`` exists, then answered 503 without
being stored, as a network that died under an uploader would leave it. Once released, such PUTs go through; every
other request goes to moto untouched."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def holding(app, folder: Path):
    def handle(environ, start_response):
        hold = folder / "hold"
        if environ["REQUEST_METHOD"] == "PUT" and hold.exists() and not (folder / "release").exists():
            if environ["PATH_INFO"].endswith(hold.read_text().strip()):
                (folder / "held").write_text(environ["PATH_INFO"])
                while not (folder / "release").exists():
                    time.sleep(0.05)
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"the upload was cut off"]
        return app(environ, start_response)

    return handle


def main(port: int, folder: Path) -> None:
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, holding(app, folder), threaded=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
