"""Offline side of recserve: demo data, two-tower and ranker training, export and offline evaluation.

`recserve.training.build.build_demo` runs it all and writes a version directory as docs/model-repository.md
describes; the server only ever reads what it writes.
"""
