"""The HTTP gateway: the Ollama API, an OpenAI-compatible API, a job surface, metrics.

>>> from actors.gateway import create_app, GatewayServer
>>> server = GatewayServer(create_app(lane)).start()   # a loopback URL, in a thread
"""

from actors.gateway.app import create_app
from actors.gateway.auth import Caller, KeyRing
from actors.gateway.server import GatewayServer, serve

__all__ = ["Caller", "GatewayServer", "KeyRing", "create_app", "serve"]
