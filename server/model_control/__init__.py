"""Which model versions serve, and how they change while the server runs (Triton's model control).

`slot` holds the versions serving now; `policy` says which versions should (Triton's version policy);
`manager` loads, swaps and unloads them (at start, by polling the repository, or on request).
"""
