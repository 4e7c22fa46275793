"""HTTP API, its guard, the WebSocket hub and page, and the monitor that serves them for a deployment."""
