"""The listening side: an HTTP/1.1 server on asyncio protocols, parsed by httptools."""
