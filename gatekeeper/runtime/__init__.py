"""Processes: the command, `gatekeeper up`, the supervisor and its workers, the embedded servers."""
