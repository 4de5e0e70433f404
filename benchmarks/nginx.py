"""nginx, when installed, as the upstream (a fixed small body) and as the reference proxy.

Each instance runs from its own prefix directory with one worker, no daemon, no access log and
every temp path inside the prefix, so it needs neither root nor /etc/nginx.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .builtin_upstream import BODY
from .procs import HOST, Child, wait_port

__all__ = ["nginx_binary", "start_nginx_proxy", "start_nginx_upstream"]

_COMMON = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{body}
}}
"""

_UPSTREAM = """\
    server {{
        listen {host}:{port} backlog=4096;
        default_type application/json;
        location / {{ return 200 '{body}'; }}
    }}
"""

_PROXY = """\
    upstream bench_upstream {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""


def nginx_binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def _start(name: str, body: str, work: Path, prefix_cmd: list[str], port: int) -> Child:
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed")
    prefix = work / name
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_COMMON.format(prefix=prefix, body=body))
    # -e: log startup errors to stderr instead of the compiled-in /var/log path.
    argv = [
        *prefix_cmd,
        binary,
        "-p",
        str(prefix),
        "-c",
        str(conf),
        "-e",
        "stderr",
        "-g",
        "daemon off;",
    ]
    child = Child(name, argv, work)
    try:
        wait_port(port, 10.0, child)
    except BaseException:
        child.stop()
        raise
    return child


def start_nginx_upstream(work: Path, prefix_cmd: list[str], port: int) -> Child:
    """nginx answering every request with the same small JSON body."""
    text = BODY.decode().strip().replace("'", "")
    body = _UPSTREAM.format(host=HOST, port=port, body=text)
    return _start("nginx-upstream", body, work, prefix_cmd, port)


def start_nginx_proxy(work: Path, prefix_cmd: list[str], port: int, upstream_port: int) -> Child:
    """nginx as a keep-alive reverse proxy (one worker) in front of the upstream."""
    body = _PROXY.format(host=HOST, port=port, upstream=f"{HOST}:{upstream_port}")
    return _start("nginx-proxy", body, work, prefix_cmd, port)
