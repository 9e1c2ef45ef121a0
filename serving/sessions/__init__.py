"""Live scan sessions: frames and positions stream in while the scan runs and the object grows.

:class:`~serving.sessions.session.Session` pairs and stitches one scan (composing the
:mod:`~serving.sessions.messages` checks, the :mod:`~serving.sessions.frame_table`, the
:mod:`~serving.sessions.stream_canvas` and the :mod:`~serving.sessions.statistics`), the
:class:`~serving.sessions.manager.SessionManager` holds a server's sessions under memory limits and
feeds them to the inference pump (:mod:`~serving.sessions.pump`), and :mod:`serving.sessions.routes`
speaks ``/v1/sessions`` (HTTP and WebSocket) and serves the ``/ui`` viewer.
"""

from serving.sessions.manager import SessionLimits, SessionManager
from serving.sessions.session import Receipt, Session

__all__ = ["Receipt", "Session", "SessionLimits", "SessionManager"]
