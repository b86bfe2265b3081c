"""The Pulumi program of mlassets as importable modules; `__main__.py` only calls `program.run`."""
