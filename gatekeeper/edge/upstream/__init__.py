"""The upstream side: a keep-alive connection pool and WebSocket tunnels."""
