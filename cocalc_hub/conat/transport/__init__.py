"""Engine.IO v4 + Socket.IO v5 over WebSocket."""
