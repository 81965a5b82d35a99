"""Model -> deployable artifacts + manifest.json: the offline stage (export, optimize, fuse, quantize, parity).

`python -m build_artifacts --model M --out DIR`. Steps live in build.py (one per variant), their constants
in recipe.py (written into the manifest). What loads and runs the result is the `runtime` package, which
never imports this one; the services and their images do not contain it.
"""
