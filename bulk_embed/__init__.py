"""Bulk embedding of a corpus on Ray Data: `python -m bulk_embed`, resumable, with progress.

    inputs.py   input files -> a fixed plan of parts; one part -> its raw rows
    encoder.py  texts -> vectors with one ONNX variant of an artifact folder (runtime only; the parity gate)
    worker.py   one part in a Ray actor: read, sort out bad rows, embed, write atomically
    output.py   the output folder: parts, rejects, the job record that makes --resume safe
    job.py      the driver: plan, skip what is done, run the rest on Ray Data, summary
    cli.py      flags -> job; exit 2 with one line for what a user can fix
    corpus.py   the demo corpus (data/): Python standard library docstrings
    measure.py  the reference run (reference/): in-process vs Ray, kill and resume

Imports only `runtime` from this project (never services, build_artifacts or torch).
"""
