"""The gateway's HTTP/1.1 server: an asyncio protocol over httptools that runs an ASGI app.

``protocol`` is one connection, ``runner`` the server and the single-process entry point,
``lifespan`` the application's start-up and shutdown, ``workers`` the ``--workers N`` supervisor.
"""

from llmrelay.server.runner import Server, bind_socket, run

__all__ = ["Server", "bind_socket", "run"]
