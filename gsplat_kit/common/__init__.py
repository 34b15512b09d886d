"""Small pieces every pipeline shares: user errors, atomic writes, output folders that belong to one run,
paths confined to their root, data-only loading of torch files, and KEY=VALUE options.

Nothing here imports torch at module level except `safe_load`, so the CLI's `--help` stays fast.
"""
