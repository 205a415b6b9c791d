"""Benchmarks of Session Vault against its references (`python -m bench`).

Each scenario is one module with `async def run(ctx: Context) -> list[Figure]`
and one line in `bench.registry.SCENARIOS`. Every scenario measures ours and
its reference in the same run, alternating, and reports ours / reference.
"""
