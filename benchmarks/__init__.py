"""Side-by-side performance harness for the gatekeeper proxy (issue 4).

Run ``python -m benchmarks proxy`` (``--quick`` for a short pass); results go to
``benchmarks/results/latest.{json,md,png}``. See docs/performance.md.
"""

__all__: list[str] = []
