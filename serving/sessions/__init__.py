"""Live scan sessions: frames and positions stream in while the scan runs and the object grows.

:class:`~serving.sessions.session.Session` pairs and stitches one scan, the
:class:`~serving.sessions.manager.SessionManager` holds a server's sessions under memory limits, and
:mod:`serving.sessions.routes` speaks ``/v1/sessions`` (HTTP and WebSocket) and serves the ``/ui`` viewer.
"""

from serving.sessions.manager import SessionLimits, SessionManager
from serving.sessions.session import Receipt, Session

__all__ = ["Receipt", "Session", "SessionLimits", "SessionManager"]
