"""Serving: the WebSocket server, HTTP routes and page, Wyoming, security, journal, metrics."""
