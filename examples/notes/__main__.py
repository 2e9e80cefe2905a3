"""``python -m examples.notes``: serve the notes service with uvicorn.

``HOST`` (default 127.0.0.1) and ``PORT`` (default 8000) choose where it listens. The tables
are the migrations' (``make demo`` applies them first, with ``dbscope migrate``).
"""

import os

import uvicorn


def main() -> None:
    """Serve the app on HOST:PORT until interrupted."""
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    uvicorn.run(f"{__package__}.app:app", host=host, port=port)


if __name__ == "__main__":
    main()
